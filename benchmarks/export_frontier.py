"""The accuracy/size frontier of rank cuts: exported SSA models against BP's dense export.

    python -m benchmarks.export_frontier --out=benchmarks/reports/EXPORT.md
    python -m benchmarks.export_frontier --source=runs --runs=runs/grids

By default (``--source=results``) it needs no trained model: the accuracies
are the ones the grids recorded (``benchmarks/results/<grid>.jsonl``, every
seed), and each record's architecture is rebuilt at the ranks the run ended
with and exported the same way (merge, form auto, the input normalization,
tf2onnx, the layer norms folded). Parameters, multiply-adds and latency depend
on the ranks and the form only, not on the weights. ``--source=runs`` instead
reads finished runs of the grids ``rules_smallconv`` (the uncut SSA and BP),
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

from ssa_tf import atomic_files, cli
from ssa_tf.cli import usage_error

FLAGS = flags.FLAGS
flags.DEFINE_enum("source", "results", ["results", "runs"], "results: the grids' recorded "
                  "results and ranks (no model needed); runs: export the finished runs' models")
flags.DEFINE_string("results", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                    "folder of the grids' <grid>.jsonl (--source=results)")
flags.DEFINE_string("runs", os.path.join("runs", "grids"), "folder of the grids' workdirs "
                    "(--source=runs)")
flags.DEFINE_integer("latency_runs", 100, "timed onnxruntime runs per export")
flags.DEFINE_integer("threads", 2, "onnxruntime intra-op threads per session")
flags.DEFINE_string("out", None, "also write the table to this Markdown file")
flags.DEFINE_integer("profile_runs", 10, "profiled onnxruntime runs per export (0: none)")
flags.DEFINE_multi_string("group", [], "export only this row, by its label (repeat; BP's "
                          "dense export is always in)")

UNCUT, UNCUT_CHANNEL = "SSA, no cuts", "SSA channel view, no cuts"
CHANNEL_CUT_UNCUT = "SSA channel view, no cut (channel_cut)"
HEADS_CUT_UNCUT = "SSA local conv heads, channel view, no cut (heads_cut)"
DEPLOY_UNCUT = "SSA later-shaped heads, channel view, no cut (deploy_cut)"
COMPACT_UNCUT = "--preset=compact, no cut (compact)"
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
          + [(f"SSA channel view, one cut, tau {t}, ends kept", "rank_once",
              f"channel, tau {t}, ends kept", UNCUT_CHANNEL) for t in (0.8, 0.7)]
          + [(f"SSA, one cut, tau {t} of the outputs' energy, ends kept", "rank_once",
              f"outputs, tau {t}, ends kept", UNCUT) for t in (0.99, 0.98)]
          + [(f"SSA, one cut of the dense layer only, tau {t}", "rank_once", f"dense only, tau {t}",
              UNCUT) for t in (0.7, 0.5)]
          + [(f"SSA, cut every epoch, tau {t}", "rank_gradual", f"tau {t}", UNCUT)
             for t in (0.99, 0.98)]
          # the channel view cut once after epoch 10 of 20, every layer, the slots kept
          + [(CHANNEL_CUT_UNCUT, "channel_cut", "no cut", CHANNEL_CUT_UNCUT)]
          + [(f"SSA channel view, one cut after epoch 10, tau {t} (channel_cut)", "channel_cut",
              f"one cut, tau {t}", CHANNEL_CUT_UNCUT) for t in (0.9, 0.8, 0.7)]
          # SSA with local conv heads in the channel view, cut once after epoch 5 (heads_cut)
          + [(HEADS_CUT_UNCUT, "heads_cut", "no cut", HEADS_CUT_UNCUT)]
          + [(f"SSA local conv heads, channel view, one cut after epoch 5, tau {t} (heads_cut)",
              "heads_cut", f"one cut, tau {t}", HEADS_CUT_UNCUT) for t in (0.7, 0.6)]
          + [("SSA local conv heads, channel view, the dense layer cut after epoch 5, tau 0.5 "
              "(heads_cut)", "heads_cut", "dense layer only, tau 0.5", HEADS_CUT_UNCUT)]
          # heads_recipe's SSA row in the channel view, cut once after epoch 4 (deploy_cut)
          + [(DEPLOY_UNCUT, "deploy_cut", "no cut", DEPLOY_UNCUT)]
          + [(f"SSA later-shaped heads, channel view, {v} (deploy_cut)", "deploy_cut", v,
              DEPLOY_UNCUT) for v in (
                  "one cut, tau 0.6", "one cut, tau 0.6, ends kept",
                  "one cut, tau 0.65, ends kept", "one cut after epoch 1, tau 0.6, ends kept",
                  "one cut, tau 0.8, dense layer 0.5, ends kept",
                  "one cut, tau 0.7, dense layer 0.5, ends kept",
                  "one cut, tau 0.7, dense layer 0.6, ends kept",
                  "one cut of the dense layer alone, 0.5", "one cut, tau 0.99, ends kept",
                  "one cut after epoch 10, tau 0.7, dense layer 0.5, ends kept",
                  "one cut, exact re-factoring, tau 0.8, dense layer 0.78, ends kept",
                  "one cut of the outputs' energy, tau 0.993, dense layer 0.9998, "
                  "ends kept")]
          # the preset as a user runs it, against itself uncut (compact)
          + [(COMPACT_UNCUT, "compact", "--preset=compact, no cut", COMPACT_UNCUT),
             ("--preset=compact (compact)", "compact", "--preset=compact", COMPACT_UNCUT)]
          + [(f"{v} (compact)", "compact", v, COMPACT_UNCUT) for v in (
              "--preset=compact, dense layer 0.7", "--preset=compact, convolutions 0.75")])


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


def recorded(grid, variant):
    """The grid's recorded results of one variant, by seed (the last record of a seed)."""
    from benchmarks import records  # the records in today's names (config.legacy)

    found = records.load_results(os.path.join(FLAGS.results, f"{grid}.jsonl"))
    return {r["seed"]: r for r in found if r["name"] == variant}


def export_recorded(record):
    """(ONNX bytes, records, params, MACs per example) of a record's architecture at its ranks."""
    from benchmarks import rebuild

    c = record["config"]
    if c["data.dataset"] != "cifar10" or c.get("data.image_size"):
        raise ValueError(f"{record['name']}: rebuilt exports are of 32x32 CIFAR-10 models, "
                         f"not {c['data.dataset']} at image size {c.get('data.image_size')}")
    model = rebuild.model_at_ranks(c["model.model"], c["rule.name"], record["ranks"],
                                   record["seed"], norm=c["model.norm"],
                                   activation=c["model.activation"],
                                   conv_factorization=c.get("model.conv_factorization",
                                                            "spatial"))
    proto, records, params = rebuild.export_onnx(model)
    return proto.SerializeToString(), records, params, sum(r.macs or 0 for r in records)


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
    if FLAGS.source == "runs" and not os.path.isdir(FLAGS.runs):
        usage_error(f"--runs={FLAGS.runs} is not a folder (the grids' --workdir)")
    if FLAGS.source == "results" and not os.path.isdir(FLAGS.results):
        usage_error(f"--results={FLAGS.results} is not a folder (the grids' results/)")
    unknown = sorted(set(FLAGS.group) - {g[0] for g in GROUPS})
    if unknown:
        usage_error(f"--group names no row: {unknown}")
    cli.import_tensorflow()
    import numpy as np

    from ssa_tf.export.deploy import latency_ms, onnx_session

    rows, sessions = [], {}
    x = np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype(np.float32)
    groups = [g for g in GROUPS if not FLAGS.group or g[0] in FLAGS.group
              or g[0] == "BP (dense)" or g[0] in {c for l, _, _, c in GROUPS if l in FLAGS.group}]
    with tempfile.TemporaryDirectory() as tmp:
        for label, grid, variant, _ in groups:
            if FLAGS.source == "runs":
                found = finished(FLAGS.runs, grid, variant)
            else:
                found = recorded(grid, variant)
            for seed, source in sorted(found.items()):
                print(f"exporting {label}, seed {seed} ...", flush=True)
                if FLAGS.source == "runs":
                    payload, records, params, macs, summary = export(source, tmp)
                    val = summary["history"]["val_accuracy"][-1]
                    test = summary["test_accuracy"]
                else:
                    payload, records, params, macs = export_recorded(source)
                    val, test = source["val_accuracy"][-1], source["test_accuracy"]
                key = f"{label} s{seed}"
                sessions[key] = onnx_session(payload, threads=FLAGS.threads)
                ranks = [r.rank / r.full_rank for r in records if r.full_rank]
                share = weight_share(payload, x, tmp) if FLAGS.profile_runs else None
                rows.append(dict(key=key, label=label, seed=seed, params=params, macs=macs,
                                 bytes=len(payload), ranks=ranks, share=share,
                                 val=val, test=test))
    if not rows:
        where = FLAGS.runs if FLAGS.source == "runs" else FLAGS.results
        usage_error(f"no finished runs of rules_smallconv, rank_frontier, rank_once or "
                    f"rank_gradual under {where}")
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

    what = ("the recorded results, each architecture rebuilt at its final ranks"
            if FLAGS.source == "results" else "the finished runs' models")
    lines = [f"Command: `python -m benchmarks.export_frontier {' '.join(sys.argv[1:])}`; "
             f"from {what}; "
             f"{os.cpu_count()} CPU cores ({platform.machine()}), {datetime.date.today()}; "
             f"onnxruntime at batch 64, {FLAGS.threads} threads, median of "
             f"{FLAGS.latency_runs} runs, exports timed in turn. The last column is a cut "
             "model's test accuracy minus that of the uncut model of the same seed: mean "
             "(± sample standard deviation) over the seeds named.", "",
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
        spread = f" ± {statistics.stdev(pairs) * 100:.1f}" if len(pairs) > 1 else ""
        drop = (f"{statistics.fmean(pairs) * 100:+.1f}{spread} points (seeds "
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
        atomic_files.write_text(FLAGS.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.run(main)
