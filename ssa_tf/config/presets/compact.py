"""A smaller model to deploy: the local heads' training with one exact rank cut.

    python -m ssa_tf.train --preset=compact --rule=ssa \\
        --dataset=cifar10 --data_dir=DIR --epochs=20 --set data.augment=true
    python export/to_onnx.py --workdir=WORKDIR --output=model.onnx --form=measured

Everything ``--preset=local_heads`` sets (each module learns from its own head shaped
like the later network, beta 0, the rate x0.1 after three quarters of the epochs), with
the convolutions in the channel view (``model.conv_factorization=channel``: a cut
convolution exports as two smaller ones, the form that runs faster at ImageNet size,
``benchmarks/reports/DEPLOY_LATENCY.md``) and one rank cut after a fifth of the epochs:
the convolutions to 80% of their weight energy (about half their rank), the dense layers
to 78% (a 512-unit layer to about 75), the first layer and the classifier kept. The cut
re-factors each layer exactly (``rank.feedback_cut=first``, Eckart-Young): the slot
cut keeps each component as it is, and with no orthogonality term the factors drift far
from orthogonal (at half rank it lost 21-24% of the middle convolutions' output energy
where the exact cut lost 3-7%); the heads, not the feedback factors, carry the error, so
keeping B in register buys nothing here. The cut's epoch, like the rate's decay, follows
``--epochs`` when the run starts; to extend a finished run, give its own ``--set
rank.start=4 --set rank.interval=20 --set train.lr_decay_epochs=[15]`` (for 20 epochs)
with the new ``--epochs`` (extended past epoch 24, it cuts again there, as
``rank.interval`` says).

Measured (``python -m benchmarks.grid --grid=compact --data_dir=DIR``,
``benchmarks/reports/compact.md`` and ``compact_export.md``; smallconv, first 10,000
CIFAR-10 training images with augmentation, 20 epochs, validation split, seeds 1-6): test
0.655 +- 0.005 against 0.660 +- 0.007 for this preset without the cut, -0.6 +- 0.3 points
paired by seed (0.0 to -0.9; seeds 1-3 alone -0.4 +- 0.4); the middle convolutions at
34-35 of 64 and 56-59 of 128, the dense layer at 63-73 of 512; exported at 0.47x BP's
parameters. The slot cut at about the same ranks
lost 1.2 +- 0.6 points (``deploy_cut.md``). On smallconv the cut convolutions export merged
(no faster); at ImageNet size the channel view's cut pairs are the faster form
(``DEPLOY_LATENCY.md``).
"""


def values(rule_name: str, given=None) -> dict:
    from ssa_tf.config.presets import local_heads
    from ssa_tf.methods import registry

    def able(rule):
        return rule.svd and "local" in rule.choices.get("feedback", ())

    rule = registry.RULES.get(rule_name)
    if rule is None or not able(rule):
        names = [n for n in registry.NAMES if able(registry.RULES[n])]
        raise ValueError(f"--preset=compact cuts the ranks of SVD factors trained from local "
                         f"heads; --rule={rule_name} has not both: use one of {', '.join(names)}")
    out = local_heads.values(rule_name, given)
    epochs = given.train.epochs if given is not None else None
    out.update({"model.conv_factorization": "channel",
                "rank.tau": 0.8, "rank.dense_tau": 0.78, "rank.keep_ends": True,
                "rank.feedback_cut": "first",
                # one cut, after a fifth of the run (4 of 20 epochs as measured)
                "rank.start": max(1, (epochs or 20) // 5), "rank.interval": max(epochs or 20, 1)})
    return out
