"""Search SSA's loss weights alpha, beta, gamma with KerasTuner; draw the sensitivity plot.

    python tuning/search.py                                    # embedded MNIST, smallconv, 10 trials
    python tuning/search.py --dataset=cifar10 --data_dir=DIR --model=smallconv \\
        --tuner=bayesian --max_trials=20 --epochs_per_trial=3 --set data.max_train_examples=10000
    python tuning/search.py --dataset=cifar10 ... --report_only  # results.csv, plot, best.flags

Rerunning the same command resumes the search in --directory/--project_name.
Outputs there: results.csv (one row per trial), sensitivity.png, each trial's
run (trial_*/run, a workdir of python -m ssa_tf.train) and, when the best trial
leads the next by more than the noise band of the validation split,
best.flags (`python -m ssa_tf.train --flagfile=.../best.flags` trains the
trial again, to the same validation accuracy). The objective is the last
epoch's validation accuracy on a part held out of the training split
(data.validation_split), never the test split.

The command line is ssa_tf.tuning.command (installed as the ssa-search
console script too); the logic lives in ssa_tf.tuning. Every flag is
checked before TensorFlow is imported: a mistake ends with one line on stderr
and exit status 2. Exit status 1: no trial completed, or too many trials in a
row failed (the report is written either way).
"""

import os
import sys

if __name__ == "__main__":
    # run as `python tuning/search.py` from a clone without installing ssa_tf
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ssa_tf.tuning.command import run_main

    run_main()
