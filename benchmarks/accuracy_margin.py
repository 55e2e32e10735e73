"""The numbers tests/test_accuracy.py asserts: smallconv, 2 epochs on the embedded
MNIST sample, per rule and seed (the test runs seed 2).

    python -m benchmarks.accuracy_margin --seeds=1,2,3 --modes=dfa,ssa
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds to run")
flags.DEFINE_list("modes", ["dfa", "ssa"], "rules to run")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tests.test_accuracy import accuracy

    table = {m: [] for m in FLAGS.modes}
    for seed in (int(s) for s in FLAGS.seeds):
        row = {m: accuracy(m, seed) for m in FLAGS.modes}
        for m, a in row.items():
            table[m].append(a)
        print(f"seed {seed}: " + "  ".join(f"{m} {a:.3f}" for m, a in row.items()), flush=True)
    for m, accs in table.items():
        print(f"{m}: min {min(accs):.3f}, mean {sum(accs) / len(accs):.3f}")


if __name__ == "__main__":
    app.run(main)
