"""Modules that learn from their own trained heads: the best transport-free setting measured.

    python -m ssa_tf.train --preset=local_heads --rule=ssa|dfa \\
        --dataset=cifar10 --data_dir=DIR --epochs=20 --set data.augment=true

The local route (``rule.feedback=local``): each module trains a small head of its own,
a 3x3 convolution with ReLU, a pooled 2x2 grid and a linear layer, on its own
cross-entropy with the label. No output error reaches a module and no gradient crosses
a module boundary; the heads are dropped at export. The network's classifier starts
from Glorot weights, the rate is 1e-3, and the SVD rules' alignment term is off (beta 0:
it pulls the factors towards the feedback factors, which no head reads).

Measured (``benchmarks/reports/heads_20ep.md``; smallconv, first 10,000 CIFAR-10 training
images with augmentation, 20 epochs, validation split, 3 seeds): ssa with this preset
0.620 +- 0.002, plain layers (dfa) 0.620 +- 0.005, BP 0.643 +- 0.005. Heads of two
convolutions gave ssa the same mean (0.620 +- 0.010) at 1.7x the epoch time.
"""


def values(rule_name: str) -> dict:
    from ssa_tf.methods import registry

    rule = registry.RULES.get(rule_name)
    if rule is None or "local" not in rule.choices.get("feedback", ()):
        able = [n for n in registry.NAMES
                if "local" in registry.RULES[n].choices.get("feedback", ())]
        raise ValueError(f"--preset=local_heads trains each module from its own head (the "
                         f"local route); --rule={rule_name} has none: use one of {', '.join(able)}")
    out = {"rule.feedback": "local", "rule.readout_head": "conv",
           "rule.readout_depth": 1, "model.head_init": "glorot",
           "train.learning_rate": 1e-3}
    if rule.svd:
        out["rule.beta"] = 0.0
    return out
