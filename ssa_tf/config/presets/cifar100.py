"""The paper's CIFAR-100 setting (supplementary section 2): resnet32, 200 epochs, rank cuts.

    python -m ssa_tf.train --preset=cifar100 --data_dir=DIR [--rule=bp|dfa|ssa]

Adam at 1e-4, x0.1 at epochs 20, 40 and 60, batch 128, the paper's augmentation;
rules with SVD factors cut every 10 epochs to 95% of the energy. Expected
result: not measured here. At the ~6 minutes of a 45,000-image resnet32 BP
epoch on this project's 2 CPU cores, 200 epochs take about 20 hours for BP
alone; the paper reports SSA near BP.
"""


def values(rule: str) -> dict:
    out = {"data.dataset": "cifar100", "model.model": "resnet32", "train.epochs": 200,
           "train.batch_size": 128, "train.learning_rate": 1e-4,
           "train.lr_decay_epochs": (20, 40, 60)}
    if _svd(rule):
        # the paper adjusts the rate to the rank reduction: a warm-up over one epoch after
        # each cut (45,000 training images at batch 128; benchmarks/reports/cut_recipe.md)
        out.update({"rank.tau": 0.95, "rank.start": 0, "rank.interval": 10,
                    "rank.warmup_steps": 352})
    return out


def _svd(rule):
    from ssa_tf.methods import registry

    return rule in registry.RULES and registry.RULES[rule].svd
