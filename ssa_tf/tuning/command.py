"""The coefficient search's command line: ``python tuning/search.py`` and the ``ssa-search``
console script (pyproject.toml) both run ``run_main``. Its flags, its --help, and the
wiring; the search is ``ssa_tf.tuning.search`` (TensorFlow), the checks
``ssa_tf.tuning.settings`` (none). tuning/search.py's docstring says what it writes.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from ssa_tf import cli, errors, preflight
from ssa_tf.cli import usage_error
from ssa_tf.tuning import settings

FLAGS = flags.FLAGS
RUN = ("dataset", "data_dir", "model", "rule", "batch_size", "learning_rate", "seed", "preset")
cli.define_run_flags(RUN)
flags.DEFINE_string("tuner", "random", f"one of {', '.join(settings.TUNERS)}")
flags.DEFINE_integer("max_trials", 10, "number of trials (a rerun with more adds trials)")
flags.DEFINE_integer("epochs_per_trial", 3, "epochs per trial (hyperband: the most any trial gets)")
flags.DEFINE_string("directory", os.path.join("runs", "tuning"), "folder holding the searches")
flags.DEFINE_string("project_name", None, "the search's folder (default <dataset>-<model>-<tuner>)")
for _name, _scale in (("alpha", "uniform"), ("beta", "log-uniform"), ("gamma", "log-uniform")):
    flags.DEFINE_list(f"{_name}_range", list(map(str, settings.DEFAULT_RANGES[_name])),
                      f"LOW,HIGH of {_name}, {_scale}; LOW=HIGH fixes it")
flags.DEFINE_list("learning_rate_range", [], "LOW,HIGH to search the Adam rate too, log-uniform "
                  "(default: fixed at --learning_rate or SSA's)")
flags.DEFINE_string("strategy", "one_device", f"the trials' runtime.strategy, one of "
                    f"{', '.join(settings.STRATEGIES)} (best.flags names it)")
flags.DEFINE_integer("max_consecutive_failed_trials", 3, "stop after this many failed trials")
flags.DEFINE_boolean("report_only", False, "write results.csv, sensitivity.png, best.flags, stop")

_SEARCH_FLAGS = ("tuner", "max_trials", "epochs_per_trial", "directory", "project_name",
                 "strategy", "max_consecutive_failed_trials")
HELP = f"""Search SSA's loss weights (alpha, beta, gamma) with KerasTuner.

usage: python tuning/search.py [flags] [--set SECTION.FIELD=VALUE ...]

the run being tuned (as python -m ssa_tf.train; a rule with SSA's loss weights):
{cli.run_flags_help(RUN)}
  --set S.F=VALUE      any other setting of the run, e.g. --set data.max_train_examples=10000

the search:
  --tuner=NAME         {', '.join(settings.TUNERS)} (random)
  --max_trials=N       trials (10; a rerun with more adds trials)
  --epochs_per_trial=N epochs per trial (3; hyperband: the most any trial gets)
  --alpha_range=LO,HI  (0.1,2, uniform); --beta_range (1e-4,1) and --gamma_range (1e-3,10),
                       log-uniform; --learning_rate_range to search the rate too
  --directory=DIR      folder of the searches (runs/tuning); --project_name=NAME its subfolder
  --strategy=NAME      the trials' runtime.strategy: one_device or mirrored;
                       --max_consecutive_failed_trials=N (3)
  --report_only        rewrite results.csv, sensitivity.png and best.flags, then stop
  --flagfile=FILE      read flags from FILE

Each trial is a run of python -m ssa_tf.train (in trial_*/run), scored by its last
epoch on data.validation_split (0.1) carved from train, never on the test split;
best.flags, written when the best trial leads the next by more than the noise
band, trains it again to the same number. Exit status: 0 done, 1 no trial
completed, 2 a mistake (one line)."""


def config_from_flags() -> settings.SearchConfig:
    # SSA unless --rule names another rule (a preset's rule does not count)
    run = cli.run_config_from_flags(RUN, [] if cli.given_rule() else ["rule.name=ssa"])
    ranges = {f"{name}_range": settings.parse_range(name, FLAGS[f"{name}_range"].value)
              for name in ("alpha", "beta", "gamma", "learning_rate")}
    for name in ("alpha", "beta", "gamma"):
        if ranges[f"{name}_range"] is None:
            raise ValueError(f"--{name}_range must be two numbers LOW,HIGH")
    return settings.SearchConfig(run=run, **ranges,
                                 **{name: FLAGS[name].value for name in _SEARCH_FLAGS})


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as e:
        usage_error(str(e))
    problem = settings.validate(cfg)
    if problem:
        usage_error(problem)

    from ssa_tf.tuning import report
    if FLAGS.report_only:
        if not os.path.exists(os.path.join(cfg.project, "search.json")):
            usage_error(f"no search in {cfg.project}; run it first (same flags, no --report_only)")
        summary = report.report(cfg.project)
    else:
        try:
            # the data must be there too (a file-system check, no TensorFlow)
            preflight.check_data(cfg.run)
            settings.check_resumable(cfg)
            settings.check_writable(cfg)
        except errors.Error as e:
            cli.fail(e)
        # TensorFlow starts only now, after the flags and the data are known to be good.
        cli.import_tensorflow()
        from ssa_tf.tuning import search

        try:
            summary = search.run_search(cfg)
        except errors.Error as e:
            cli.fail(e)
    if summary.get("top") is None:
        print(f"error: no trial completed; reasons in {summary['paths']['csv']}", file=sys.stderr)
        sys.exit(1)


def run_main():
    cli.run(main, help_text=HELP, command="python tuning/search.py")
