"""The deploy script's command line: ``python export/to_onnx.py`` and the ``ssa-export``
console script (pyproject.toml) both run ``run_main``. Its flags, its --help, and the
wiring; the export is ``ssa_tf.export.deploy`` (TensorFlow), the checks
``ssa_tf.export.config`` (none). export/to_onnx.py's docstring says what it writes.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from ssa_tf import cli
from ssa_tf.cli import usage_error
from ssa_tf.export import config as cfg_lib  # no TensorFlow import

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "training run folder holding model.keras and config.json")
flags.DEFINE_string("output", None, "ONNX file to write")
flags.DEFINE_string("saved_model", None, "also write a TensorFlow SavedModel to this new folder")
flags.DEFINE_integer("opset", cfg_lib.DEFAULT_OPSET, "ONNX opset "
                     f"({cfg_lib.OPSETS.start}..{cfg_lib.OPSETS.stop - 1})")
flags.DEFINE_string("form", "auto", "per SVD layer: auto (fewer multiply-adds), merged "
                    "(one layer), factored (two stacked layers) or measured (the fastest in "
                    "onnxruntime: each layer's two forms timed alone at batch 1, then that mix, "
                    "all merged and all factored timed whole at batches 1 and 8)")
flags.DEFINE_integer("latency_runs", 50, "timed onnxruntime runs per batch size")
flags.DEFINE_integer("verify_batch", 64, "evaluation examples compared with the SSA model")
flags.DEFINE_string("input", "raw", "what the export takes: raw (pixels 0-255; the training "
                    "normalization folded in) or normalized (the pipeline's tensors)")
flags.DEFINE_boolean("fold_norms", True, "fold each layer norm's channel mean into the weight "
                     "layer before it (--nofold_norms: tf2onnx's graph as it comes)")

HELP = f"""Deploy a trained SSA model: merge its SVD layers, export ONNX (and a SavedModel).

usage: python export/to_onnx.py --workdir=RUN --output=model.onnx [flags]

  --workdir=DIR        a finished training run (model.keras, config.json)
  --output=FILE        the ONNX file to write
  --saved_model=DIR    also write a TensorFlow SavedModel to this new folder
  --opset=N            ONNX opset, {cfg_lib.OPSETS.start}..{cfg_lib.OPSETS.stop - 1} ({cfg_lib.DEFAULT_OPSET})
  --form=NAME          per SVD layer: auto (fewer multiply-adds), merged (one layer),
                       factored (two stacked layers) or measured (the fastest in
                       onnxruntime: each layer's two forms timed alone at batch 1, then
                       that mix, all merged and all factored timed whole at batches 1, 8)
  --latency_runs=N     timed onnxruntime runs per batch size (50)
  --verify_batch=N     evaluation examples compared with the SSA model (64)
  --input=raw          raw: pixels 0-255 in (the training normalization folded in, the
                       default); normalized: the training pipeline's tensors
  --nofold_norms       keep tf2onnx's layer norms as they come (by default each norm's
                       channel mean is folded into the weight layer before it: the same
                       function in fewer ops; benchmarks/reports/EXPORT.md has its latency)
  --flagfile=FILE      read flags from FILE

The export is checked with onnxruntime against the SSA model on the run's
evaluation data; files are written only if every logit agrees within 1e-4 and
every top-1 prediction is the same. Exit status: 0 written, 1 the check
failed (nothing written), 2 a mistake in what was asked (one line)."""


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    cfg = cfg_lib.ExportConfig(workdir=FLAGS.workdir, output=FLAGS.output,
                               saved_model=FLAGS.saved_model, opset=FLAGS.opset, form=FLAGS.form,
                               latency_runs=FLAGS.latency_runs, verify_batch=FLAGS.verify_batch,
                               input=FLAGS.input, fold_norms=FLAGS.fold_norms)
    problem = cfg_lib.validate(cfg)
    if problem:
        usage_error(problem)

    # TensorFlow starts only now, after the flags and paths are known to be good.
    logging.set_verbosity(logging.WARNING)  # SavedModel export logs every step at INFO
    cli.import_tensorflow()
    try:
        with cli.quiet_stderr():
            from ssa_tf.export import deploy as export
    except ImportError as e:
        usage_error(f"{e}; the export needs tf2onnx, onnx and onnxruntime "
                     "(pip install -e '.[export]')")

    try:
        result = export.export_run(cfg)
    except cfg_lib.UsageError as e:
        usage_error(str(e))
    except export.ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(export.format_result(result))


def run_main():
    cli.run(main, help_text=HELP, command="python export/to_onnx.py")
