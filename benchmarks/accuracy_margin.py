"""The numbers tests/test_accuracy.py asserts, per rule and seed (the tests run
seed 2): smallconv, 2 epochs on the embedded MNIST sample, or 3 epochs on the
first 5,000 CIFAR-10 training images scored on the validation split.

    python -m benchmarks.accuracy_margin --seeds=1,2,3 --rules=dfa,ssa
    python -m benchmarks.accuracy_margin --dataset=cifar10 --seeds=1,2,3 --rules=dfa,ssa

``--modes`` is an alias of ``--rules``.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from ssa_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds to run")
flags.DEFINE_list("rules", None, "rules to run (dfa,ssa)")
flags.DEFINE_list("modes", None, "an alias of --rules")
flags.DEFINE_enum("dataset", "mnist5k", ["mnist5k", "cifar10"], "the test's data "
                  "(cifar10: from SSA_TF_TFDS_DIR, default ../shared/tfds)")
flags.DEFINE_integer("epochs", None, "epochs (default: the test's)")
flags.DEFINE_float("learning_rate", None, "every rule at this rate (default: each rule's)")
flags.DEFINE_integer("max_train_examples", None, "cifar10: training images (default: the test's)")


def main(argv):
    del argv
    if FLAGS.rules is not None and FLAGS.modes is not None and FLAGS.rules != FLAGS.modes:
        cli.usage_error(f"--rules={','.join(FLAGS.rules)} and --modes={','.join(FLAGS.modes)} "
                        "differ (--modes is an alias of --rules); give one of them")
    rules = FLAGS.rules or FLAGS.modes or ["dfa", "ssa"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(repo, "tests"))
    from test_accuracy import accuracy

    table = {rule: [] for rule in rules}
    for seed in (int(s) for s in FLAGS.seeds):
        budget = {k: v for k, v in (("epochs", FLAGS.epochs),
                                   ("max_train_examples", FLAGS.max_train_examples)) if v}
        row = {rule: accuracy(rule, seed, FLAGS.dataset, FLAGS.learning_rate, **budget)
               for rule in rules}
        for rule, a in row.items():
            table[rule].append(a)
        print(f"seed {seed}: " + "  ".join(f"{rule} {a:.3f}" for rule, a in row.items()),
              flush=True)
    for rule, accs in table.items():
        print(f"{rule}: min {min(accs):.3f}, mean {sum(accs) / len(accs):.3f}")


if __name__ == "__main__":
    cli.run(main)
