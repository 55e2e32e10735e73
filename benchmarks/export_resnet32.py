"""ONNX export of a rank-cut SSA ResNet-32 against the same architecture trained with BP.

    python benchmarks/export_resnet32.py --data_dir=../shared/tfds

Issue 6's deployment benchmark. Trains (or reuses, when the workdir already
holds a finished run's summary.json) two ResNet-32 runs on the real CIFAR-10
with ``python -m ssa_tf.train``: one with BP, one with SSA and rank cuts
(--rank_tau after every --rank_interval epochs). Both are exported through the
project's own path (``ssa_tf.export.deploy.export_run``, what export/to_onnx.py
runs: merge, tf2onnx from_function, opset 17, dynamic batch, parity check
against the trained model). Then, in one process and interleaved run by run
so that load from other jobs on the machine falls on all models alike, it
measures: parameters, ONNX file size, median onnxruntime latency at batch 1
and 64 (same intra-op thread count for every model), test accuracy of the
ONNX models on the whole test split (side by side with the runs'
summary.json), and, to explain the latency, an onnxruntime profile per op
type. A third model, the SSA run exported with every layer merged (same
ranks, dense kernels), separates what factoring buys from what low rank buys.

Targets (issue 6): SSA export <= 0.5x the parameters and <= 0.7x the batch-64
latency of the BP export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", os.path.join("..", "shared", "tfds"), "TFDS data_dir")
flags.DEFINE_string("workroot", os.path.join(tempfile.gettempdir(), "export_resnet32"),
                    "run folders and ONNX files go here")
flags.DEFINE_integer("epochs", 3, "training epochs of each run")
flags.DEFINE_integer("max_train_examples", 10000, "training images")
flags.DEFINE_integer("batch_size", 64, "training batch size")
flags.DEFINE_integer("seed", 1, "seed of both runs")
flags.DEFINE_float("tau", 0.95, "SSA rank cuts: energy kept")
flags.DEFINE_integer("rank_interval", 1, "SSA rank cuts: epochs between cuts (first after epoch 1)")
flags.DEFINE_integer("threads", 2, "onnxruntime intra-op threads, the same for every model")
flags.DEFINE_integer("runs_b1", 400, "timed runs per model at batch 1")
flags.DEFINE_integer("runs_b64", 60, "timed runs per model at batch 64")
flags.DEFINE_integer("profile_runs", 20, "profiled runs per model at batch 64 (interleaved)")
flags.DEFINE_list("rank_fractions", ["0.5", "0.25", "0.125"],
                  "diagnostic: also time the SSA export with every layer cut further to this "
                  "fraction of its full rank (no training after the cut, so no accuracy)")
flags.DEFINE_boolean("accuracy", True, "also measure the ONNX models' accuracy on the test split")
flags.DEFINE_string("results", None,
                    "write the measurements as JSON here (default WORKROOT/results.json)")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------
# Training (skipped when the run is already there)
# --------------------------------------------------------------------------

def train_args(mode, workdir):
    args = ["--dataset=cifar10", f"--data_dir={os.path.abspath(FLAGS.data_dir)}",
            "--model=resnet32", f"--epochs={FLAGS.epochs}", f"--batch_size={FLAGS.batch_size}",
            f"--max_train_examples={FLAGS.max_train_examples}", "--noaugment",
            f"--seed={FLAGS.seed}", f"--mode={mode}", f"--workdir={workdir}"]
    if mode == "ssa":
        args += [f"--rank_tau={FLAGS.tau}", "--rank_start=0",
                 f"--rank_interval={FLAGS.rank_interval}"]
    return args


def ensure_run(mode):
    workdir = os.path.join(FLAGS.workroot, mode)
    summary = os.path.join(workdir, "summary.json")
    if os.path.exists(summary):
        log(f"{mode}: reusing the finished run in {workdir}")
    else:
        args = train_args(mode, workdir)
        log(f"{mode}: training: python -m ssa_tf.train {' '.join(args)}")
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ssa_tf.train", *args], cwd=REPO, env=env,
                       check=True)
        log(f"{mode}: trained in {time.perf_counter() - start:.0f} s")
    with open(summary) as f:
        return workdir, json.load(f)


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------

def session(payload, threads, profile_prefix=None):
    from ssa_tf.export.deploy import onnx_session
    return onnx_session(payload, threads, profile_prefix)


def interleaved_latency(sessions, x, runs):
    """{name: (median ms, p25, p75)}, the models timed in turn (ssa_tf.export.deploy.latency_ms)."""
    from ssa_tf.export.deploy import latency_ms
    return latency_ms(sessions, x, runs)


def profile_by_op(payloads, x, runs, prefix):
    """{name: (ms per run by op type, {node: (op, ms per run)})}, the models run in turn."""
    from ssa_tf.export.deploy import run_onnx

    sessions = {n: session(p, FLAGS.threads, f"{prefix}_{n}") for n, p in payloads.items()}
    for s in sessions.values():
        run_onnx(s, x)  # warm-up, profiled too: counted below, hence runs + 1
    for k in range(runs):
        for n in (list(sessions) if k % 2 == 0 else list(sessions)[::-1]):
            run_onnx(sessions[n], x)
    out = {}
    for n, s in sessions.items():
        path = s.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.remove(path)
        by_op, by_node = {}, {}
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            op = e.get("args", {}).get("op_name", "?")
            ms = e["dur"] / 1e3 / (runs + 1)
            by_op[op] = by_op.get(op, 0.0) + ms
            node = e["name"][: -len("_kernel_time")]
            by_node[node] = (op, by_node.get(node, (op, 0.0))[1] + ms)
        out[n] = (by_op, by_node)
    return out


def onnx_accuracy(sessions, test):
    """Top-1 accuracy of each session on the whole test pipeline, batch by batch in turn."""
    import numpy as np
    from ssa_tf.export.deploy import run_onnx

    correct = {n: 0 for n in sessions}
    total = 0
    for x, y in test:
        x, y = np.asarray(x, np.float32), np.asarray(y).reshape(-1)
        for n, s in sessions.items():
            correct[n] += int(np.sum(run_onnx(s, x).argmax(-1) == y))
        total += len(y)
    return {n: c / total for n, c in correct.items()}, total


def onnx_params(payload):
    import numpy as np
    import onnx

    model = onnx.load_from_string(payload)
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    os.makedirs(FLAGS.workroot, exist_ok=True)
    bp_dir, bp_sum = ensure_run("bp")
    ssa_dir, ssa_sum = ensure_run("ssa")

    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    from ssa_tf.export import convert
    from ssa_tf.export import deploy as export
    from ssa_tf import data as data_lib
    from ssa_tf.export.config import ExportConfig

    # ---- export through the project's own path (parity checked inside) ----
    results, payloads = {}, {}
    for name, workdir in (("bp", bp_dir), ("ssa", ssa_dir)):
        out = os.path.join(FLAGS.workroot, f"{name}.onnx")
        cfg = ExportConfig(workdir=workdir, output=out, latency_runs=5)
        results[name] = export.export_run(cfg, log=lambda m, n=name: log(f"{n}: {m}"))
        with open(out, "rb") as f:
            payloads[name] = f.read()
        log(f"{name}: ONNX vs trained model max |logit diff| "
            f"{results[name].onnx_check['max_abs_diff']:.2e} on "
            f"{results[name].onnx_check['examples']} test images")
    # the SSA run with every layer merged: same ranks, dense kernels (a diagnostic)
    ssa_model = export.load_run_model(os.path.join(ssa_dir, "model.keras"))
    ssa_merged, _ = convert.merge(ssa_model, "merged")
    payloads["ssa_merged"] = export.to_onnx(ssa_merged).SerializeToString()

    print()
    print("SSA export, per layer (form chosen by the exporter, MACs per image):")
    print(convert.format_records(results["ssa"].records))
    print()

    # ---- side by side ----
    names = ["bp", "ssa", "ssa_merged"]
    sessions = {n: session(payloads[n], FLAGS.threads) for n in names}
    ds = data_lib.load("cifar10", 250, data_dir=FLAGS.data_dir, augment=False,
                       max_train_examples=1)
    x_eval, _ = next(iter(ds.test))
    x_eval = np.asarray(x_eval, np.float32)
    latency = {}
    for batch, runs in ((1, FLAGS.runs_b1), (64, FLAGS.runs_b64)):
        xb = np.ascontiguousarray(x_eval[:batch])
        log(f"timing batch {batch}: {runs} interleaved runs per model, {FLAGS.threads} threads")
        latency[batch] = interleaved_latency(sessions, xb, runs)
    acc, n_test = {}, 0
    if FLAGS.accuracy:
        log("accuracy of the ONNX models on the whole test split")
        acc, n_test = onnx_accuracy({n: sessions[n] for n in ("bp", "ssa")}, ds.test)
    log("profiling batch 64 per op type")
    x64 = np.ascontiguousarray(x_eval[:64])
    profiles = profile_by_op({n: payloads[n] for n in names}, x64, FLAGS.profile_runs,
                             os.path.join(FLAGS.workroot, "profile"))

    # ---- latency against rank, independent of how far training got the ranks ----
    sweep = {}
    if FLAGS.rank_fractions:
        cut = export.load_run_model(os.path.join(ssa_dir, "model.keras"))
        variants = {}
        for f in sorted((float(v) for v in FLAGS.rank_fractions), reverse=True):
            for layer in cut.svd_layers():
                r = max(1, int(round(f * layer.full_rank)))
                if r < layer.rank:
                    layer.truncate(r)
            merged, records = convert.merge(cut, "auto")
            variants[f"ssa_r{f:g}"] = (export.to_onnx(merged).SerializeToString(), records,
                                       export.count_params(merged))
        log(f"timing batch 64 against rank: {FLAGS.runs_b64 // 2} interleaved runs per model")
        sweep_sessions = {"bp": sessions["bp"], "ssa": sessions["ssa"],
                          **{n: session(v[0], FLAGS.threads) for n, v in variants.items()}}
        ms = interleaved_latency(sweep_sessions, np.ascontiguousarray(x_eval[:64]),
                                 max(2, FLAGS.runs_b64 // 2))
        for n, (payload, records, n_params) in variants.items():
            forms = sum(r.form == "factored" for r in records)
            sweep[n] = dict(params=n_params, macs=sum(r.macs for r in records),
                            factored_layers=forms, layers=len(records), ms_b64=ms[n][0],
                            ratio_b64=ms[n][0] / ms["bp"][0])
        sweep["_ssa_ratio_b64_in_sweep"] = ms["ssa"][0] / ms["bp"][0]

    ssa_records, bp_records = results["ssa"].records, results["bp"].records
    macs = {"bp": sum(r.macs for r in bp_records), "ssa": sum(r.macs for r in ssa_records),
            "ssa_merged": sum(r.dense_macs for r in ssa_records)}
    params = {"bp": results["bp"].params, "ssa": results["ssa"].params,
              "ssa_merged": results["ssa"].dense_params}
    rows = {}
    for n in names:
        by_op = profiles[n][0]
        rows[n] = dict(params=params[n], onnx_params=onnx_params(payloads[n]),
                       onnx_bytes=len(payloads[n]), macs=macs[n],
                       ms_b1=latency[1][n][0], ms_b1_iqr=latency[1][n][1:],
                       ms_b64=latency[64][n][0], ms_b64_iqr=latency[64][n][1:],
                       profile_ms_by_op={k: round(v, 3) for k, v in
                                         sorted(by_op.items(), key=lambda kv: -kv[1])},
                       conv_nodes=sum(1 for op, _ in profiles[n][1].values() if op == "Conv"))

    # ---- report ----
    label = {"bp": "BP, exported dense", "ssa": f"SSA tau {FLAGS.tau:g}, export (auto form)",
             "ssa_merged": f"SSA tau {FLAGS.tau:g}, all merged (diagnostic)"}
    print("| model | parameters | ONNX bytes | MACs/image | ms batch 1 | ms batch 64 | "
          "test accuracy (summary.json) | test accuracy (ONNX) |")
    print("|---|---|---|---|---|---|---|---|")
    sums = {"bp": bp_sum, "ssa": ssa_sum}
    for n in names:
        r = rows[n]
        a1 = f"{sums[n]['test_accuracy']:.4f}" if n in sums else "="
        a2 = f"{acc[n]:.4f}" if n in acc else "="
        print(f"| {label[n]} | {r['params']:,} | {r['onnx_bytes']:,} | {r['macs']:,} | "
              f"{r['ms_b1']:.2f} | {r['ms_b64']:.1f} | {a1} | {a2} |")
    ratio = lambda k, n="ssa": rows[n][k] / rows["bp"][k]  # noqa: E731
    print()
    print(f"SSA/BP: parameters {ratio('params'):.3f} (target <= 0.5), ONNX bytes "
          f"{ratio('onnx_bytes'):.3f}, MACs {ratio('macs'):.3f}, latency batch 1 "
          f"{ratio('ms_b1'):.3f}, batch 64 {ratio('ms_b64'):.3f} (target <= 0.7)")
    print(f"SSA all-merged/BP: latency batch 64 {ratio('ms_b64', 'ssa_merged'):.3f}")
    print()
    print("batch-64 profile, ms per run by op type:")
    ops = sorted({op for n in names for op in rows[n]["profile_ms_by_op"]},
                 key=lambda op: -rows["bp"]["profile_ms_by_op"].get(op, 0))
    print("| op | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for op in ops:
        print(f"| {op} | " + " | ".join(f"{rows[n]['profile_ms_by_op'].get(op, 0):.2f}"
                                        for n in names) + " |")
    print("| Conv nodes | " + " | ".join(str(rows[n]["conv_nodes"]) for n in names) + " |")
    conv_rate = {n: rows[n]["macs"] * 64 / (rows[n]["profile_ms_by_op"].get("Conv", 0)
                                            + rows[n]["profile_ms_by_op"].get("FusedConv", 0))
                 / 1e6 for n in names}
    print("conv throughput (GMAC/s, all conv+dense MACs over Conv/FusedConv time): "
          + ", ".join(f"{n} {v:.1f}" for n, v in conv_rate.items()))
    forms = {}
    for r in ssa_records:
        forms[r.form] = forms.get(r.form, 0) + 1
    print(f"exporter forms: {forms}")
    if sweep:
        print()
        print("SSA cut further to a fraction of full rank (no training after; latency vs BP):")
        print("| fraction of full rank | parameters | params/BP | MACs/BP | factored layers | "
              "ms batch 64 | latency/BP |")
        print("|---|---|---|---|---|---|---|")
        for n, v in sweep.items():
            if n.startswith("_"):
                continue
            print(f"| {n[len('ssa_r'):]} | {v['params']:,} "
                  f"| {v['params'] / rows['bp']['params']:.3f} "
                  f"| {v['macs'] / rows['bp']['macs']:.3f} | {v['factored_layers']}/{v['layers']} "
                  f"| {v['ms_b64']:.1f} | {v['ratio_b64']:.3f} |")
        print(f"(the trained SSA export in the same timing: latency/BP "
              f"{sweep['_ssa_ratio_b64_in_sweep']:.3f})")
    print(f"wall time {time.perf_counter() - t0:.0f} s")

    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cores": os.cpu_count(),
        "tensorflow": tf.__version__, "onnxruntime": ort.__version__, "threads": FLAGS.threads,
        "runs": {"b1": FLAGS.runs_b1, "b64": FLAGS.runs_b64}, "test_images": n_test,
        "rows": rows, "onnx_accuracy": acc, "rank_sweep": sweep,
        "summary_accuracy": {n: (sums[n]["test_accuracy"], sums[n]["test_split"]) for n in sums},
        "parity": {n: results[n].onnx_check for n in results},
        "ssa_ranks": ssa_sum["ranks"], "epoch_seconds": {n: sums[n]["epoch_seconds"] for n in sums},
        "records": [dict(name=r.name, shape=r.shape, rank=r.rank, full_rank=r.full_rank,
                         form=r.form, params=r.params, dense_params=r.dense_params, macs=r.macs,
                         dense_macs=r.dense_macs) for r in ssa_records],
        "ssa_profile_by_node": profiles["ssa"][1], "bp_profile_by_node": profiles["bp"][1],
    }
    path = FLAGS.results or os.path.join(FLAGS.workroot, "results.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    log(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
