"""The margin tests/test_accuracy.py asserts: SSA vs DFA, smallconv, 2 epochs on
the embedded MNIST sample, per seed (the test runs seed 2).

    python -m benchmarks.accuracy_margin --seeds=1,2,3
"""

from __future__ import annotations

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["1", "2", "3"], "seeds to run")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tests.test_accuracy import accuracy

    rows = []
    for seed in (int(s) for s in FLAGS.seeds):
        ssa, dfa = accuracy("ssa", seed), accuracy("dfa", seed)
        rows.append((seed, ssa, dfa))
        print(f"seed {seed}: SSA {ssa:.3f}  DFA {dfa:.3f}  margin {ssa - dfa:.3f}", flush=True)
    print(f"smallest margin {min(s - d for _, s, d in rows):.3f}")


if __name__ == "__main__":
    app.run(main)
