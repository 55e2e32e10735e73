"""SSA vs DFA vs BP on the real CIFAR-10, in one reproducible report.

    python -m benchmarks.run --suite=quick     # under 20 minutes on 2 CPU cores
    python -m benchmarks.run --suite=full      # hours: 45k images, augmentation, resnet32 too
    python -m benchmarks.run --suite=quick --report_only

Writes ``benchmarks/RESULTS.md`` (``RESULTS-full.md`` for the full suite) and
PNG plots beside it; every table is stamped with the command, the machine and
the date. Sections:

- accuracy: each model trained with BP, DFA and SSA (shipped defaults) at the
  same epochs, batch and data; SSA also with rank cuts (tau 0.95 after every
  epoch) for its final parameters and ranks; learning curves in one plot;
- ablation: SSA with beta = 0, gamma = 0 and both;
- speed: seconds per training step of BP, DFA, SSA and SSA at the cut ranks,
  timed interleaved in one process;
- memory: peak resident memory of a training process per mode, read by the
  parent with ``getrusage(RUSAGE_CHILDREN)`` (the child's own maximum);
- inference: parameters, ONNX size and onnxruntime latency (batch 1 and 64)
  of the exported rank-cut SSA model against the BP model;
- alignment: angle between each module's SSA/DFA update and the true BP
  gradient over training (``ssa_tf.diagnostics``).

Each finished piece is appended to ``benchmarks/results/suite-<suite>.json``
at once, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from ssa_tf import cli
from ssa_tf.cli import usage_error

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SUITES = {
    # smallconv only: resnet32 under SSA costs ~10 min per 5k-image epoch here
    "quick": dict(models=("smallconv",), max_train_examples=5000, epochs=3, augment=False,
                  ablation=True, speed_steps=15, speed_repeats=3, align_every=20,
                  memory_examples=640, latency_runs=50),
    "full": dict(models=("smallconv", "resnet32"), max_train_examples=None, epochs=20,
                 augment=True, ablation=True, speed_steps=30, speed_repeats=5, align_every=200,
                 memory_examples=2560, latency_runs=200),
}
MODES = ("bp", "dfa", "ssa")
ABLATIONS = {"beta=0": dict(beta=0.0), "gamma=0": dict(gamma=0.0),
             "beta=0, gamma=0": dict(beta=0.0, gamma=0.0)}
CUT = dict(rank_tau=0.95, rank_start=0, rank_interval=1)

FLAGS = flags.FLAGS
flags.DEFINE_string("suite", "quick", f"one of {', '.join(SUITES)}")
flags.DEFINE_string("data_dir", os.path.join("..", "shared", "tfds"), "TFDS data_dir with cifar10")
flags.DEFINE_string("out", HERE, "folder for RESULTS.md, the PNGs and results/")
flags.DEFINE_string("workdir", os.path.join(tempfile.gettempdir(), "ssa_tf_benchmarks"),
                    "folder for the runs' workdirs (models, logs)")
flags.DEFINE_integer("seed", 1, "seed of every run (>= 1)")
flags.DEFINE_boolean("report_only", False, "rewrite the report from finished results")


# --------------------------------------------------------------------------
# Results store: one JSON file, rewritten atomically after every piece.
# --------------------------------------------------------------------------

class Store:
    def __init__(self, path):
        self.path = path
        self.data = {}
        if os.path.exists(path):
            with open(path) as f:
                self.data = json.load(f)

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(self.path + ".tmp", self.path)


def machine():
    import tensorflow as tf
    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}")


# --------------------------------------------------------------------------
# Training runs (accuracy, ablation, alignment).
# --------------------------------------------------------------------------

def run_config(suite, model, mode, **extra):
    from ssa_tf.config import RunConfig
    s = SUITES[suite]
    return RunConfig(dataset="cifar10", data_dir=FLAGS.data_dir, model=model, mode=mode,
                     epochs=s["epochs"], batch_size=64, max_train_examples=s["max_train_examples"],
                     augment=s["augment"], seed=FLAGS.seed, restart=True, **extra)


def train_run(store, suite, model, name, mode, align=False, **extra):
    key = f"train/{model}/{name}"
    if store.get(key):
        print(f"  {key}: done before, reused", flush=True)
        return store.get(key)
    from ssa_tf import run, data
    from ssa_tf.training.diagnostics import AlignmentMonitor

    cfg = run_config(suite, model, mode, **extra)
    cfg.workdir = os.path.join(FLAGS.workdir, suite, model, name.replace(" ", "").replace(",", "_"))
    callbacks = []
    monitor = None
    if align and mode != "bp":
        # a fixed batch of the validation split, so that the angles compare over time
        ds = data.load("cifar10", 128, data_dir=FLAGS.data_dir, augment=False,
                       max_train_examples=1)
        x, y = next(iter(ds.test))
        monitor = AlignmentMonitor(x.numpy(), y.numpy(), every=SUITES[suite]["align_every"])
        callbacks.append(monitor)
    print(f"  {key}: training {mode} {model}, {cfg.epochs} epochs ...", flush=True)
    start = time.time()
    summary = run.train(cfg, verbose=2, extra_callbacks=callbacks)
    record = {
        "mode": mode, "name": name, "settings": {k: v for k, v in extra.items()},
        "val_accuracy": summary["history"]["val_accuracy"],
        "test_accuracy": summary["test_accuracy"], "split": summary["test_split"],
        "train_split": summary["train_split"], "seconds": round(time.time() - start, 1),
        "epoch_seconds": summary["epoch_seconds"], "params": summary["trainable_params"],
        "final_params": summary["final_trainable_params"], "ranks": summary["ranks"],
        "workdir": os.path.relpath(cfg.workdir, FLAGS.workdir),  # below --workdir
        "alignment": [list(r) for r in monitor.rows] if monitor else [],
    }
    store.put(key, record)
    print(f"  {key}: accuracy {record['test_accuracy']:.4f} in {record['seconds']:.0f} s",
          flush=True)
    return record


# --------------------------------------------------------------------------
# Speed: interleaved steps in one process.
# --------------------------------------------------------------------------

def speed(store, suite, model, cut_ranks):
    key = f"speed/{model}"
    if store.get(key):
        return store.get(key)
    import numpy as np
    import keras
    from ssa_tf import data
    from ssa_tf.training.model import SSAModel, compile_model

    s = SUITES[suite]
    ds = data.load("cifar10", 64, data_dir=FLAGS.data_dir, max_train_examples=64 * 8,
                   augment=False)
    batches = [(x, y) for x, y in ds.train.take(8)]
    models = {}
    for name, mode, ranks in (("BP", "bp", None), ("DFA", "dfa", None), ("SSA", "ssa", None),
                              ("SSA after cuts", "ssa", cut_ranks)):
        keras.utils.set_random_seed(FLAGS.seed)
        m = SSAModel(model, ds.input_shape, ds.num_classes, mode=mode, ranks=ranks)
        compile_model(m)
        models[name] = m
    print(f"  {key}: timing {', '.join(models)} ({s['speed_repeats']} x {s['speed_steps']} "
          "steps, interleaved) ...", flush=True)
    for m in models.values():  # trace and warm up
        for x, y in batches[:3]:
            m.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(s["speed_repeats"]):
        for name, m in models.items():
            start = time.perf_counter()
            for k in range(s["speed_steps"]):
                x, y = batches[k % len(batches)]
                m.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / s["speed_steps"])
    record = {name: {"ms_per_step": 1000 * statistics.median(t),
                     "params": int(sum(np.prod(v.shape) for v in models[name].trainable_variables))}
              for name, t in times.items()}
    store.put(key, record)
    return record


# --------------------------------------------------------------------------
# Memory: one child process per mode.
# --------------------------------------------------------------------------

CHILD = r"""
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if code.returncode:
    sys.stderr.write(code.stderr[-2000:])
    sys.exit(code.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
"""


def memory(store, suite, model):
    key = f"memory/{model}"
    if store.get(key):
        return store.get(key)
    s = SUITES[suite]
    record = {}
    for mode in MODES:
        workdir = os.path.join(FLAGS.workdir, suite, model, f"memory-{mode}")
        cmd = [sys.executable, "-m", "ssa_tf.train", "--dataset=cifar10",
               f"--data_dir={FLAGS.data_dir}", f"--model={model}", f"--mode={mode}", "--epochs=1",
               f"--max_train_examples={s['memory_examples']}", "--noaugment", "--restart",
               f"--workdir={workdir}"]
        print(f"  {key}: peak memory of {mode} training ...", flush=True)
        out = subprocess.run([sys.executable, "-c", CHILD, *cmd], cwd=REPO, capture_output=True,
                             text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if out.returncode:
            raise RuntimeError(f"memory run of {mode} failed: {out.stderr[-1000:]}")
        record[mode] = int(out.stdout.strip().splitlines()[-1]) / 1024  # MiB
    store.put(key, record)
    return record


# --------------------------------------------------------------------------
# Inference: ONNX exports of the rank-cut SSA model and the BP model.
# --------------------------------------------------------------------------

def inference(store, suite, model, bp_run, cut_run):
    key = f"inference/{model}"
    if store.get(key):
        return store.get(key)
    import numpy as np
    from ssa_tf import convert, data, export

    ds = data.load("cifar10", 64, data_dir=FLAGS.data_dir, max_train_examples=1, augment=False)
    x, _ = next(iter(ds.test))
    x = x.numpy().astype(np.float32)
    record, sessions = {}, {}
    for name, run in (("BP", bp_run), ("SSA (cuts)", cut_run)):
        trained = export.load_run_model(os.path.join(FLAGS.workdir, run["workdir"],
                                                     "model.keras"))
        merged, records = convert.merge(trained, "auto")
        proto = export.to_onnx(merged).SerializeToString()
        session = export.onnx_session(proto)
        check = export.compare_logits(np.asarray(trained(x, training=False)),
                                      export.run_onnx(session, x), f"{name} ONNX")
        sessions[name] = session
        record[name] = {"params": export.count_params(merged), "onnx_bytes": len(proto),
                        "max_abs_diff": check["max_abs_diff"],
                        "forms": {r.name: f"{r.form} r={r.rank}" for r in records},
                        "accuracy": run["test_accuracy"]}
    print(f"  {key}: onnxruntime latency ...", flush=True)
    runs = SUITES[suite]["latency_runs"]
    for batch in (1, 64):
        xb = np.resize(x, (batch, *x.shape[1:])).astype(np.float32)
        ms = export.median_latency_ms(sessions, xb, runs)
        for name in sessions:
            record[name][f"latency_ms_b{batch}"] = ms[name]
    store.put(key, record)
    return record


# --------------------------------------------------------------------------
# The suite and its report.
# --------------------------------------------------------------------------

def run_suite(suite, store):
    for model in SUITES[suite]["models"]:
        print(f"[{model}] accuracy (BP, DFA, SSA, SSA with cuts) and alignment", flush=True)
        runs = {mode: train_run(store, suite, model, mode, mode, align=True) for mode in MODES}
        cut = train_run(store, suite, model, "ssa + cuts", "ssa", **CUT)
        if SUITES[suite]["ablation"]:
            print(f"[{model}] ablation of the loss terms", flush=True)
            for name, settings in ABLATIONS.items():
                train_run(store, suite, model, f"ssa {name}", "ssa", **settings)
        print(f"[{model}] speed", flush=True)
        speed(store, suite, model, cut["ranks"])
        print(f"[{model}] memory", flush=True)
        memory(store, suite, model)
        print(f"[{model}] inference", flush=True)
        inference(store, suite, model, runs["bp"], cut)
    store.put("meta", {"machine": machine(), "date": datetime.date.today().isoformat(),
                       "command": f"python -m benchmarks.run --suite={suite}"})


def _savefig(fig, path):
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    os.replace(path + ".tmp.png", path)


def plots(suite, store, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tag = "" if suite == "quick" else "-full"
    paths = {}
    models = [m for m in SUITES[suite]["models"] if store.get(f"train/{m}/ssa")]
    # learning curves
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for name, style in (("bp", ":"), ("dfa", "--"), ("ssa", "-"), ("ssa + cuts", "-.")):
            r = store.get(f"train/{model}/{name}")
            if r:
                acc = r["val_accuracy"]
                ax.plot(range(1, len(acc) + 1), acc, style, marker="o", ms=4, label=name.upper()
                        if name in MODES else "SSA + cuts")
        ax.set_title(f"{model}: validation accuracy (CIFAR-10)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    paths["accuracy"] = os.path.join(out, f"results{tag}_accuracy.png")
    _savefig(fig, paths["accuracy"])
    plt.close(fig)

    # ablation, speed, memory: bars
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    model = models[0]
    names = ["ssa", *[f"ssa {a}" for a in ABLATIONS]]
    accs = [store.get(f"train/{model}/{n}") for n in names]
    shown = [(n, r["test_accuracy"]) for n, r in zip(names, accs) if r]
    axes[0].bar([n.replace("ssa ", "").replace("ssa", "all terms") for n, _ in shown],
                [a for _, a in shown], color="tab:blue")
    axes[0].set_title(f"{model}: SSA loss-term ablation")
    axes[0].set_ylabel("test accuracy")
    sp = store.get(f"speed/{model}") or {}
    axes[1].bar(list(sp), [v["ms_per_step"] for v in sp.values()], color="tab:orange")
    axes[1].set_title(f"{model}: ms per training step (batch 64)")
    mem = store.get(f"memory/{model}") or {}
    axes[2].bar([m.upper() for m in mem], list(mem.values()), color="tab:green")
    axes[2].set_title(f"{model}: peak resident memory (MiB)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    paths["bars"] = os.path.join(out, f"results{tag}_ablation_speed_memory.png")
    _savefig(fig, paths["bars"])
    plt.close(fig)

    # alignment
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, mode in zip(axes, ("ssa", "dfa")):
        r = store.get(f"train/{model}/{mode}")
        rows = [row for row in (r or {}).get("alignment", [])
                if not str(row[1]).startswith(("W_vs_B", "norm_ratio"))]
        for module in dict.fromkeys(row[1] for row in rows):
            pts = [(s, a) for s, m, a in rows if m == module]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=module)
        ax.axhline(90, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{model}, {mode.upper()}: angle to the BP gradient")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("degrees")
    paths["alignment"] = os.path.join(out, f"results{tag}_alignment.png")
    _savefig(fig, paths["alignment"])
    plt.close(fig)
    return paths


def report(suite, store, out):
    meta = store.get("meta")
    if not meta:
        usage_error(f"no finished {suite} suite in {store.path}; run it first")
    paths = plots(suite, store, out)
    stamp = f"Command: `{meta['command']}`; machine: {meta['machine']}; date: {meta['date']}."
    s = SUITES[suite]
    images = ("all 45,000" if not s["max_train_examples"]
              else f"the first {s['max_train_examples']:,}")
    data = (f"real CIFAR-10 ({images} "
            f"training images, {'with' if s['augment'] else 'no'} augmentation), {s['epochs']} "
            "epochs, batch 64, Adam at each mode's default rate, seed "
            f"{FLAGS.seed}; accuracy on the 5,000-image validation split (`cifar10:test`)")
    lines = [f"# Benchmark results ({suite} suite)", "",
             "Reproduce: " + f"`python -m benchmarks.run --suite={suite}`"
             + (" (under 20 minutes on 2 CPU cores)." if suite == "quick" else
                " (takes hours)."), ""]
    targets = []
    for model in s["models"]:
        runs = {n: store.get(f"train/{model}/{n}") for n in (*MODES, "ssa + cuts")}
        if not runs["ssa"]:
            continue
        lines += [f"## {model}", "", "### Accuracy", "", f"{data}. {stamp}", "",
                  "| run | accuracy per epoch | final | s/epoch | trainable params (start -> end) |",
                  "|---|---|---|---|---|"]
        for name, r in runs.items():
            if not r:
                continue
            curve = " ".join(f"{a:.3f}" for a in r["val_accuracy"])
            params = f"{r['params']:,}" + (f" -> {r['final_params']:,}"
                                           if r["final_params"] != r["params"] else "")
            sec = statistics.mean(r["epoch_seconds"])
            lines.append(f"| {name.upper() if name in MODES else 'SSA + cuts (tau 0.95 after each epoch but the last)'}"
                         f" | {curve} | {r['test_accuracy']:.3f} | {sec:.0f} | {params} |")
        cut = runs["ssa + cuts"]
        if cut:
            lines += ["", "Final ranks of SSA + cuts: " + ", ".join(
                f"{k} {v}" for k, v in cut["ranks"].items()) + "."]
        lines += ["", f"![learning curves]({os.path.basename(paths['accuracy'])})", ""]
        bp, dfa, ssa = (runs[m]["test_accuracy"] for m in MODES)
        targets.append((model, bp, dfa, ssa, runs))

        abl = [(n, store.get(f"train/{model}/ssa {n}")) for n in ABLATIONS]
        if any(r for _, r in abl):
            lines += ["### Ablation of the loss terms", "", f"SSA as above. {stamp}", "",
                      "| SSA with | final accuracy | vs all terms |", "|---|---|---|",
                      f"| all terms (alpha 1, beta 0.01, gamma 0.1) | {ssa:.3f} | |"]
            for n, r in abl:
                if r:
                    lines.append(f"| {n} | {r['test_accuracy']:.3f} | "
                                 f"{100 * (r['test_accuracy'] - ssa):+.1f} pts |")
            lines.append("")
        sp = store.get(f"speed/{model}")
        if sp:
            base = sp["BP"]["ms_per_step"]
            lines += ["### Speed", "", f"Median ms per training step (batch 64, real CIFAR-10 "
                      f"batches), the four models timed in turn in one process, "
                      f"{s['speed_repeats']} x {s['speed_steps']} steps. \"SSA after cuts\" is "
                      "SSA built at the final ranks of SSA + cuts. " + stamp, "",
                      "| model | ms/step | vs BP | trainable params |", "|---|---|---|---|"]
            for name, v in sp.items():
                lines.append(f"| {name} | {v['ms_per_step']:.1f} | {v['ms_per_step'] / base:.2f}x"
                             f" | {v['params']:,} |")
            lines.append("")
        mem = store.get(f"memory/{model}")
        if mem:
            lines += ["### Memory", "", "Peak resident memory of a whole training process "
                      f"(`python -m ssa_tf.train`, 1 epoch of {s['memory_examples']} images), "
                      "read by its parent with `getrusage(RUSAGE_CHILDREN)`. " + stamp, "",
                      "| mode | peak RSS (MiB) | vs BP |", "|---|---|---|"]
            for mode, mib in mem.items():
                lines.append(f"| {mode.upper()} | {mib:.0f} | {mib / mem['bp']:.2f}x |")
            lines.append("")
        inf = store.get(f"inference/{model}")
        if inf:
            b, c = inf["BP"], inf["SSA (cuts)"]
            lines += ["### Inference (ONNX, onnxruntime)", "",
                      "Both trained models merged to plain Keras layers (`ssa_tf.convert.merge`, "
                      "form auto), converted with tf2onnx (opset 17), checked against the Keras "
                      f"model (max |logit diff| BP {b['max_abs_diff']:.1g}, SSA "
                      f"{c['max_abs_diff']:.1g}); median onnxruntime latency, the two sessions "
                      f"timed in turn, {s['latency_runs']} runs. " + stamp, "",
                      "| model | accuracy | params | ONNX bytes | batch 1 ms | batch 64 ms |",
                      "|---|---|---|---|---|---|"]
            for name, v in inf.items():
                lines.append(f"| {name} | {v['accuracy']:.3f} | {v['params']:,} | "
                             f"{v['onnx_bytes']:,} | {v['latency_ms_b1']:.2f} | "
                             f"{v['latency_ms_b64']:.2f} |")
            lines += ["", f"SSA/BP: parameters {c['params'] / b['params']:.2f}x, ONNX size "
                      f"{c['onnx_bytes'] / b['onnx_bytes']:.2f}x, latency batch 1 "
                      f"{c['latency_ms_b1'] / b['latency_ms_b1']:.2f}x, batch 64 "
                      f"{c['latency_ms_b64'] / b['latency_ms_b64']:.2f}x.", ""]
        if runs["ssa"].get("alignment"):
            final = {}
            for mode in ("ssa", "dfa"):
                rows = [r for r in runs[mode]["alignment"]
                        if not str(r[1]).startswith(("W_vs_B", "norm_ratio"))]
                last = max(r[0] for r in rows)
                final[mode] = {m: a for st, m, a in rows if st == last}
            lines += ["### Alignment with backprop", "",
                      "Angle between each module's update (its local-loss gradient) and the "
                      "true BP gradient of the network's cross-entropy for the same parameters, "
                      "on a fixed validation batch of 128, every "
                      f"{s['align_every']} steps (`ssa_tf.diagnostics`). Below 90 degrees the "
                      "update descends the global loss. " + stamp, "",
                      "| module | SSA at the end (deg) | DFA at the end (deg) |", "|---|---|---|"]
            for m in final["ssa"]:
                lines.append(f"| {m} | {final['ssa'][m]:.1f} | {final['dfa'].get(m, float('nan')):.1f} |")
            lines += ["", f"![ablation, speed, memory]({os.path.basename(paths['bars'])})", "",
                      f"![alignment]({os.path.basename(paths['alignment'])})", ""]

    lines += ["## Targets", "", "Issue targets on the real CIFAR-10 at equal epochs "
              "(measured here, not asserted in tests):", "",
              "| model | SSA - BP (target >= -1 pt) | SSA - DFA (target >= +10 pts) | "
              "SSA exported params / BP (target <= 0.5) |", "|---|---|---|---|"]
    for model, bp, dfa, ssa, runs in targets:
        inf = store.get(f"inference/{model}")
        ratio = (f"{inf['SSA (cuts)']['params'] / inf['BP']['params']:.2f}" if inf else "n/a")
        lines.append(f"| {model} | {100 * (ssa - bp):+.1f} pts | {100 * (ssa - dfa):+.1f} pts "
                     f"| {ratio} |")
    path = os.path.join(out, "RESULTS.md" if suite == "quick" else "RESULTS-full.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path} and {', '.join(os.path.basename(p) for p in paths.values())}")
    return path


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.suite not in SUITES:
        usage_error(f"--suite={FLAGS.suite!r} is not valid; choose from: {', '.join(SUITES)}")
    if FLAGS.seed < 1:
        usage_error(f"--seed must be >= 1, got {FLAGS.seed}")
    store = Store(os.path.join(FLAGS.out, "results", f"suite-{FLAGS.suite}.json"))
    if not FLAGS.report_only:
        from ssa_tf import data as data_lib
        try:
            data_lib.check_available("cifar10", FLAGS.data_dir, None)
        except data_lib.DataError as e:
            usage_error(str(e))
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        start = time.time()
        run_suite(FLAGS.suite, store)
        print(f"suite {FLAGS.suite} done in {(time.time() - start) / 60:.1f} min", flush=True)
    elif not store.get("meta"):
        usage_error(f"no finished {FLAGS.suite} suite in {store.path}; run it first")
    report(FLAGS.suite, store, FLAGS.out)


if __name__ == "__main__":
    cli.run(main)
