"""The accuracy/size frontier of rank cuts: exported SSA models against BP's dense export.

    python -m benchmarks.export_frontier --runs=runs/grids --out=benchmarks/EXPORT.md

Reads finished runs of the grids ``rules_smallconv`` (the uncut SSA and BP),
``rank_frontier`` (SSA cut every 4 epochs at several tau), ``rank_once`` (one
cut after epoch 10, both convolution views) and ``rank_gradual`` (a small cut
after every epoch), all at the same budget, from their workdirs
(``<runs>/<grid>/<variant>-s<seed>``), exports each
with ``export/to_onnx.py``'s own code (merge, form auto, tf2onnx, the parity
check with onnxruntime on raw pixels) and reports per model: parameters and
multiply-adds of the export, onnxruntime latency at batch 64 (the exports
timed in turn in one process, 2 threads each, the order reversed every
round), and the accuracy the run recorded (validation at its last epoch,
test once at its end), each against BP's dense export and the uncut SSA.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import platform
import statistics
import sys
import tempfile

from absl import flags

from ssa_tf import cli, files
from ssa_tf.cli import usage_error

FLAGS = flags.FLAGS
flags.DEFINE_string("runs", os.path.join("runs", "grids"), "folder of the grids' workdirs")
flags.DEFINE_integer("latency_runs", 100, "timed onnxruntime runs per export")
flags.DEFINE_integer("threads", 2, "onnxruntime intra-op threads per session")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")
flags.DEFINE_integer("profile_runs", 10, "profiled onnxruntime runs per export (0: none)")

UNCUT, UNCUT_CHANNEL = "SSA, no cuts", "SSA channel view, no cuts"
# (label, grid, variant, the uncut model it is compared with)
GROUPS = ([("BP (dense)", "rules_smallconv", "bp", None),
           (UNCUT, "rules_smallconv", "ssa", UNCUT),
           (UNCUT_CHANNEL, "rank_once", "channel, no cut", UNCUT_CHANNEL)]
          + [(f"SSA, cut every 4 epochs, tau {t}", "rank_frontier", f"tau {t}", UNCUT)
             for t in (0.95, 0.9, 0.8, 0.7)]
          + [(f"SSA, cut every 4 epochs, tau {t}, ends kept", "rank_frontier",
              f"tau {t}, ends kept", UNCUT) for t in (0.95, 0.9, 0.8)]
          + [(f"SSA, one cut, tau {t}", "rank_once", f"tau {t}", UNCUT)
             for t in (0.95, 0.9, 0.8, 0.7)]
          + [(f"SSA, one cut, tau {t}, ends kept", "rank_once", f"tau {t}, ends kept", UNCUT)
             for t in (0.95, 0.9, 0.8, 0.7)]
          + [(f"SSA channel view, one cut, tau {t}", "rank_once", f"channel, tau {t}",
              UNCUT_CHANNEL) for t in (0.9, 0.8)]
          + [(f"SSA, cut every epoch, tau {t}", "rank_gradual", f"tau {t}", UNCUT)
             for t in (0.99, 0.98)])


def finished(runs, grid, variant):
    """Workdirs of the finished runs of one variant, by seed."""
    found = {}
    for path in sorted(glob.glob(os.path.join(runs, grid, f"{glob.escape(variant)}-s*"))):
        if os.path.exists(os.path.join(path, "summary.json")):
            found[int(path.rsplit("-s", 1)[1])] = path
    return found


def export(workdir, tmp):
    """(ONNX bytes, records, params, MACs per example, summary) of one run's model."""
    from ssa_tf.export import deploy
    from ssa_tf.export.config import ExportConfig

    cfg = ExportConfig(workdir=workdir, output=os.path.join(tmp, "m.onnx"), latency_runs=1)
    result = deploy.export_run(cfg, log=lambda *_: None)
    with open(cfg.output, "rb") as f:
        payload = f.read()
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    macs = sum(r.macs or 0 for r in result.records)
    return payload, result.records, result.params, macs, summary


# the weight layers' ops; the rest is normalization, activations, pooling, layout
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


def weight_share(payload, x, tmp):
    """Fraction of onnxruntime's kernel time spent in the weight layers' ops."""
    import collections

    from ssa_tf.export.deploy import onnx_session, run_onnx

    session = onnx_session(payload, threads=FLAGS.threads,
                           profile_prefix=os.path.join(tmp, "profile"))
    for _ in range(FLAGS.profile_runs):
        run_onnx(session, x)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return sum(v for k, v in by_op.items() if k in WEIGHT_OPS) / total if total else None


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if not os.path.isdir(FLAGS.runs):
        usage_error(f"--runs={FLAGS.runs} is not a folder (the grids' --workdir)")
    cli.import_tensorflow()
    import numpy as np

    from ssa_tf.export.deploy import latency_ms, onnx_session

    rows, sessions = [], {}
    x = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for label, grid, variant, _ in GROUPS:
            for seed, workdir in finished(FLAGS.runs, grid, variant).items():
                print(f"exporting {label}, seed {seed} ...", flush=True)
                payload, records, params, macs, summary = export(workdir, tmp)
                key = f"{label} s{seed}"
                sessions[key] = onnx_session(payload, threads=FLAGS.threads)
                ranks = [r.rank / r.full_rank for r in records if r.full_rank]
                share = weight_share(payload, x, tmp) if FLAGS.profile_runs else None
                rows.append(dict(key=key, label=label, seed=seed, params=params, macs=macs,
                                 bytes=len(payload), ranks=ranks, share=share,
                                 val=summary["history"]["val_accuracy"][-1],
                                 test=summary["test_accuracy"]))
    if not rows:
        usage_error(f"no finished runs of rules_smallconv, rank_frontier, rank_once or "
                    f"rank_gradual under {FLAGS.runs}")
    print(f"timing {len(sessions)} exports in turn ...", flush=True)
    lat = {k: v[0] for k, v in latency_ms(sessions, x, FLAGS.latency_runs).items()}
    by_label = {}
    for r in rows:
        r["ms"] = lat[r["key"]]
        by_label.setdefault(r["label"], []).append(r)
    bp = by_label.get("BP (dense)")

    def mean(group, field):
        return statistics.fmean(r[field] for r in group)

    def share(group):
        values = [r["share"] for r in group if r["share"] is not None]
        return f"{statistics.fmean(values):.0%}" if values else "-"

    lines = [f"Command: `python -m benchmarks.export_frontier {' '.join(sys.argv[1:])}`; "
             f"{os.cpu_count()} CPU cores ({platform.machine()}), {datetime.date.today()}; "
             f"onnxruntime at batch 64, {FLAGS.threads} threads, median of "
             f"{FLAGS.latency_runs} runs, exports timed in turn.", "",
             "| export | seeds | mean rank (% of full) | params | vs BP | MACs/example | vs BP "
             "| ms, batch 64 | vs BP | Conv/Gemm share of time | validation | test "
             "| test vs its uncut model |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, _, _, reference in GROUPS:
        group = by_label.get(label)
        uncut = by_label.get(reference) if reference else None
        if not group:
            continue
        rank = statistics.fmean(statistics.fmean(r["ranks"]) for r in group) * 100
        ratio = (lambda f: f"{mean(group, f) / mean(bp, f):.2f}x") if bp else (lambda f: "")
        # against the uncut model of the same seeds (a seed's data order and draw)
        base = {r["seed"]: r["test"] for r in uncut or ()}
        pairs = [r["test"] - base[r["seed"]] for r in group if r["seed"] in base]
        drop = (f"{statistics.fmean(pairs) * 100:+.1f} points (seeds "
                f"{','.join(str(r['seed']) for r in group if r['seed'] in base)})"
                if pairs and reference != label else "")
        lines.append(f"| {label} | {','.join(str(r['seed']) for r in group)} | {rank:.0f} | "
                     f"{mean(group, 'params'):,.0f} | {ratio('params')} | "
                     f"{mean(group, 'macs') / 1e6:.1f}M | {ratio('macs')} | "
                     f"{mean(group, 'ms'):.1f} | {ratio('ms')} | {share(group)} | "
                     f"{mean(group, 'val'):.3f} | "
                     f"{mean(group, 'test'):.3f} | {drop} |")
    print("\n".join(lines))
    if FLAGS.out:
        files.write_text(FLAGS.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.run(main)
