"""``benchmarks.efficiency``'s counts (run in a process of its own: its flags are its own).

Its multiply-adds once counted SVD convolutions per output pixel: converted from plain
layers, they are built for any map size, and the count read the build shape."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json
from benchmarks import efficiency
from ssa_tf.training.model import build_model
out = {}
for rule, options in (("bp", {}), ("ssa", {}),
                      ("later", dict(rule="dfa", feedback="local", readout_head="later",
                                     readout_depth=3))):
    model = build_model("smallconv", (32, 32, 3), 10, **({"rule": rule} if not options
                                                          else options))
    out[rule] = [efficiency.training_macs(model), efficiency.head_costs(model)[1]]
print(json.dumps(out))
"""


def test_training_multiply_adds_count_every_position_of_a_map(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / ".keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    # smallconv: 3x3 convolutions 3->32 at 32x32, 32->64 at 16x16, 64->128 at 8x8, then
    # dense 512x512 and 512x10
    bp = 9 * (3 * 32 * 1024 + 32 * 64 * 256 + 64 * 128 * 64) + 512 * 512 + 512 * 10
    assert counts["bp"] == [bp, 0]
    # SSA at full rank runs each convolution merged (the same multiply-adds) and its dense
    # layers factored: r (m + n) with r = min(m, n)
    assert counts["ssa"][0] == bp - 512 * 512 - 512 * 10 + 512 * 1024 + 10 * 522
    # module 0's later-shaped head: conv 32->64 at 16x16, conv 64->128 at 8x8, dense 512 and
    # a linear read-out; module 1's: conv 64->128 at 8x8 and dense; module 2's: dense;
    # module 3's: the read-out only
    convs = 9 * 32 * 64 * 256 + 9 * 64 * 128 * 64
    assert counts["later"][1] == (convs + 512 * 512) + (9 * 64 * 128 * 64 + 512 * 512) \
        + 512 * 512 + 4 * 512 * 10
