"""Search SSA's loss weights alpha, beta, gamma with KerasTuner; draw the sensitivity plot.

    python tuning/search.py                                    # embedded MNIST, smallconv, 10 trials
    python tuning/search.py --dataset=cifar10 --data_dir=../shared/tfds --model=smallconv \\
        --tuner=bayesian --max_trials=20 --epochs_per_trial=3
    python tuning/search.py --dataset=cifar10 ... --report_only  # results.csv, plot, best.flags

Rerunning the same command resumes the search in --directory/--project_name.
Outputs there: results.csv (one row per trial), sensitivity.png, best.flags
(`python -m ssa_tf.train --flagfile=.../best.flags` trains the best
configuration). The objective is the validation accuracy on a part held out
of the training split, never the test split.

Flags and wiring only; the logic lives in ssa_tf.tuning. Every flag is
checked before TensorFlow is imported: a mistake ends with one line on stderr
and exit status 2. Exit status 1: no trial completed, or too many trials in a
row failed (the report is written either way).
"""

from __future__ import annotations

import os
import sys

from absl import flags

from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error
from ssa_tf.methods import spec as methods
from ssa_tf import cli
from ssa_tf import tuning

FLAGS = flags.FLAGS
# search
flags.DEFINE_string("tuner", "random", f"one of {', '.join(tuning.TUNERS)}")
flags.DEFINE_integer("max_trials", 10, "number of trials (a rerun with more adds trials)")
flags.DEFINE_integer("epochs_per_trial", 3, "epochs per trial (hyperband: the most any trial gets)")
flags.DEFINE_string("directory", os.path.join("runs", "tuning"), "folder holding the searches")
flags.DEFINE_string("project_name", None, "the search's folder name (default <dataset>-<model>-<tuner>)")
flags.DEFINE_list("alpha_range", list(map(str, tuning.DEFAULT_RANGES["alpha"])),
                  "LOW,HIGH of alpha (CE weight), uniform; LOW=HIGH fixes it")
flags.DEFINE_list("beta_range", list(map(str, tuning.DEFAULT_RANGES["beta"])),
                  "LOW,HIGH of beta (alignment weight), log-uniform; LOW=HIGH fixes it")
flags.DEFINE_list("gamma_range", list(map(str, tuning.DEFAULT_RANGES["gamma"])),
                  "LOW,HIGH of gamma (orthogonality weight), log-uniform; LOW=HIGH fixes it")
flags.DEFINE_list("learning_rate_range", [], "LOW,HIGH to search the Adam rate too, log-uniform "
                  "(default: fixed at --learning_rate or the SSA default)")
flags.DEFINE_string("strategy", "one_device", f"one of {', '.join(tuning.STRATEGIES)}")
flags.DEFINE_integer("max_consecutive_failed_trials", 3, "stop after this many failed trials in a row")
flags.DEFINE_boolean("report_only", False, "write results.csv, sensitivity.png, best.flags and stop")
# the run being tuned: as python -m ssa_tf.train (tuning.RUN_FIELDS)
flags.DEFINE_string("dataset", "mnist5k", f"one of {', '.join(cfg_lib.DATASETS)}")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
flags.DEFINE_string("manual_dir", None, "imagenet2012: folder holding the ILSVRC2012_img_*.tar files")
flags.DEFINE_string("label", "fine", "cifar100 labels: fine (100 classes) or coarse (20)")
flags.DEFINE_integer("image_size", None, "imagenet2012: training/evaluation crop (default 224)")
flags.DEFINE_float("validation_split", 0.1, "fraction of train held out to score the trials (> 0; "
                   "the test split is never used)")
flags.DEFINE_integer("max_train_examples", None, "train on only the first N examples of what the "
                     "validation split leaves")
flags.DEFINE_boolean("augment", True, "CIFAR: random crop after 4-pixel padding and flip")
flags.DEFINE_string("model", "smallconv", f"one of {', '.join(cfg_lib.MODELS)}")
flags.DEFINE_integer("batch_size", 64, "global batch size")
flags.DEFINE_float("learning_rate", None,
                   f"Adam rate when not searched (default {methods.RULES['ssa'].learning_rate:g})")
flags.DEFINE_string("norm", "layer", f"one of {', '.join(cfg_lib.NORMS)}")
flags.DEFINE_string("activation", "leaky_relu", f"one of {', '.join(cfg_lib.ACTIVATIONS)}")
flags.DEFINE_string("head_init", "zero", f"one of {', '.join(cfg_lib.HEAD_INITS)}")
# SSA's options, as in python -m ssa_tf.train (unset: SSA's defaults)
flags.DEFINE_string("feedback", None, f"error route: {', '.join(methods.ROUTES)}")
flags.DEFINE_string("feedback_spatial", None,
                    f"global route on feature maps: {', '.join(methods.SPATIAL)}")
flags.DEFINE_string("feedback_init", None,
                    f"SSA feedback factors: {', '.join(methods.FEEDBACK_INIT)}")
flags.DEFINE_integer("seed", 1, "seed of the search and of every trial's initialization (>= 1)")

_SEARCH_FLAGS = ("tuner", "max_trials", "epochs_per_trial", "directory", "project_name",
                 "strategy", "max_consecutive_failed_trials")


def config_from_flags() -> tuning.SearchConfig:
    run = cfg_lib.RunConfig(mode="ssa", learning_rate=FLAGS.learning_rate,
                            **{name: FLAGS[name].value for name in tuning.RUN_FIELDS})
    ranges = {f"{name}_range": tuning.parse_range(name, FLAGS[f"{name}_range"].value)
              for name in ("alpha", "beta", "gamma", "learning_rate")}
    for name in ("alpha", "beta", "gamma"):
        if ranges[f"{name}_range"] is None:
            raise ValueError(f"--{name}_range must be two numbers LOW,HIGH")
    return tuning.SearchConfig(run=run, **ranges,
                               **{name: FLAGS[name].value for name in _SEARCH_FLAGS})




def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as e:
        usage_error(str(e))
    problem = tuning.validate(cfg)
    if problem:
        usage_error(problem)

    if FLAGS.report_only:
        if not os.path.exists(os.path.join(cfg.project, "search.json")):
            usage_error(f"no search in {cfg.project}; run it first (same flags, no --report_only)")
        summary = tuning.report(cfg.project)
    else:
        # the data must be there too (a file-system check; data imports TensorFlow lazily)
        from ssa_tf import data as data_lib

        try:
            data_lib.check_available(cfg.run.dataset, cfg.run.data_dir, cfg.run.manual_dir)
            tuning.check_resumable(cfg)
        except (data_lib.DataError, cfg_lib.UsageError) as e:
            usage_error(str(e))
        # TensorFlow starts only now, after the flags and the data are known to be good.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            summary = tuning.run_search(cfg)
        except (data_lib.DataError, cfg_lib.UsageError) as e:
            usage_error(str(e))
        except tuning.SearchFailed as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    if summary["best"] is None:
        print(f"error: no trial completed; reasons in {summary['paths']['csv']}", file=sys.stderr)
        sys.exit(1)




if __name__ == "__main__":
    cli.run(main)
