"""Modules that learn from their own trained heads: the best transport-free setting measured.

    python -m ssa_tf.train --preset=local_heads --rule=ssa|dfa \\
        --dataset=cifar10 --data_dir=DIR --epochs=20 --set data.augment=true

The local route (``rule.feedback=local``): each module trains a head of its own shaped like
the modules after it (AugLocal-style, ``rule.readout_head=later``, depth 3: the first
module's head has the shape of the whole later network, later modules' fewer layers, the
last hidden module a linear read-out) on its own cross-entropy with the label. No output
error reaches a module and no gradient crosses a module boundary; the heads are dropped at
export. The network's classifier starts from Glorot weights, the rate is 1e-3, multiplied
by 0.1 after three quarters of the epochs (``train.lr_decay_epochs``; measured at 15 of
20). For the SVD rules the alignment term is off (beta 0: it pulls the factors towards
the feedback factors, which no head reads) and the feedback factors are random
(``feedback_init=random``: transport never; they only start the last hidden module's
read-out). The decay epoch follows ``--epochs`` when the run starts (none under 4
epochs); a resumed run keeps it: to extend a finished run, give
``--set train.lr_decay_epochs=[15]`` (its own) with the new ``--epochs``.

Measured (``benchmarks/reports/heads_recipe.md``; smallconv, first 10,000 CIFAR-10
training images with augmentation, 20 epochs, validation split, 3 seeds, the rate
decayed after epoch 15 for every row): ssa with this preset 0.652 +- 0.001, BP 0.660 +-
0.002, plain layers (dfa) with the same heads 0.643 +- 0.003. At a constant rate
(``heads_20ep``): plain layers 0.632 +- 0.010, ssa (factors copied from the weights)
0.625 +- 0.004, BP 0.643 +- 0.005. The heads cost 1.4x BP's forward multiply-adds in
training (``HEADS_COST.md``).
"""


def values(rule_name: str, given=None) -> dict:
    from ssa_tf.methods import registry

    rule = registry.RULES.get(rule_name)
    if rule is None or "local" not in rule.choices.get("feedback", ()):
        able = [n for n in registry.NAMES
                if "local" in registry.RULES[n].choices.get("feedback", ())]
        raise ValueError(f"--preset=local_heads trains each module from its own head (the "
                         f"local route); --rule={rule_name} has none: use one of {', '.join(able)}")
    out = {"rule.feedback": "local", "rule.readout_head": "later",
           "rule.readout_depth": 3, "model.head_init": "glorot",
           "train.learning_rate": 1e-3}
    epochs = given.train.epochs if given is not None else None
    if epochs and epochs >= 4:  # fewer: the decay would leave at most the last epoch
        out["train.lr_decay_epochs"] = (int(0.75 * epochs),)
    if rule.svd:
        out.update({"rule.beta": 0.0, "rule.feedback_init": "random"})
    return out
