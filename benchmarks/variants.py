"""The grids' rows that several grids share (``benchmarks.grids``), in the settings'
own names (``SECTION.FIELD``, as ``--set`` takes them).

The short names below are those names, nothing else: ``{RULE: "ssa", BETA: 0.0}`` is
``{"rule.name": "ssa", "rule.beta": 0.0}``.
"""

from __future__ import annotations

RULE, HEAD, LR = "rule.name", "model.head_init", "train.learning_rate"
BETA, GAMMA, FEEDBACK = "rule.beta", "rule.gamma", "rule.feedback"
CONV = "model.conv_factorization"

# the grids' data and budgets: CIFAR-10 at batch 64 with a validation split carved from
# train; smallconv on the first 10,000 training images, 5 epochs without augmentation
# or 20 with
CIFAR = {"data.dataset": "cifar10", "train.batch_size": 64, "data.validation_split": 0.1}
SEEDS = (1, 2, 3)
SMALLCONV = {**CIFAR, "model.model": "smallconv", "data.max_train_examples": 10000}
SHORT = {**SMALLCONV, "train.epochs": 5, "data.augment": False}
LONG = {**SMALLCONV, "train.epochs": 20, "data.augment": True}

# every rule at its defaults
RULES = {name: {RULE: name} for name in ("bp", "svd-bp", "dfa", "ssa", "fa", "bp-lagged-copy")}

# SSA's settings before the recipe grids re-chose them (the paper's head of Noekland's DFA,
# the paper's beta)
OLD_SSA = {HEAD: "zero", BETA: 0.01, GAMMA: 0.0, LR: 1e-3}
# the candidate recipe the recipe grids tried (a glorot head, no alignment term)
NEW_SSA = {HEAD: "glorot", BETA: 0.0, GAMMA: 0.0, LR: 1e-3}
SSA = {**OLD_SSA, HEAD: "glorot"}


def recipe_variants(long=False):
    """The recipe grids' rows: controls that differ from SSA in one thing, and SSA's own
    recipe. ``long``: only what the 20-epoch budget compares."""
    rows = {
        "bp, zero head": {RULE: "bp", HEAD: "zero", LR: 1e-3},
        "bp, glorot head": {RULE: "bp", HEAD: "glorot", LR: 1e-3},
        "dfa (tuned: lr 3e-4), zero head": {RULE: "dfa", HEAD: "zero", LR: 3e-4},
        "ssa, old default (zero head, beta 0.01, lr 1e-3)": {RULE: "ssa", **OLD_SSA},
        "svd-bp, as the old ssa (zero head, beta 0.01, gamma 0, lr 1e-3)": {
            RULE: "svd-bp", **OLD_SSA},
        "ssa, glorot head, beta 0": {RULE: "ssa", **NEW_SSA},
        "svd-bp, glorot head, beta 0, gamma 0 (as that ssa)": {RULE: "svd-bp", **NEW_SSA},
    }
    if long:
        return {**rows,
                # DFA's better rate at this length (rules_smallconv)
                "dfa, lr 1e-3, zero head": {RULE: "dfa", HEAD: "zero", LR: 1e-3},
                "ssa, glorot head": {RULE: "ssa", **SSA},
                "svd-bp, glorot head (as that ssa: beta 0.01, gamma 0)": {
                    RULE: "svd-bp", **SSA},
                # svd-bp's rate chosen at SSA's terms on recipe_5ep's validation split
                "svd-bp, glorot head (as that ssa), lr 3e-4": {
                    RULE: "svd-bp", **SSA, LR: 3e-4}}
    return {
        **rows,
        "dfa (tuned: lr 3e-4), glorot head": {RULE: "dfa", HEAD: "glorot", LR: 3e-4},
        "ssa, glorot head": {RULE: "ssa", **SSA},
        "ssa, beta 0": {RULE: "ssa", **OLD_SSA, BETA: 0.0},
        "ssa, lr 3e-4": {RULE: "ssa", **OLD_SSA, LR: 3e-4},
        "ssa, glorot head, beta 0, lr 3e-4": {RULE: "ssa", **NEW_SSA, LR: 3e-4},
        "svd-bp, glorot head (as that ssa), lr 3e-4": {RULE: "svd-bp", **SSA, LR: 3e-4},
        "svd-bp, glorot head (as that ssa: beta 0.01, gamma 0)": {RULE: "svd-bp", **SSA},
        # an alignment of directions only (1 - cos^2 per singular vector): no pull back
        # towards the initial weight's values
        **{f"ssa, glorot head, cosine alignment, beta {b:g}": {
            RULE: "ssa", "rule.align_form": "cosine", **SSA, BETA: b}
           for b in (0.01, 0.1)},
    }


# the fair rows of the recipe grids (spelled out, so that they share their runs) and the
# rules whose feedback learns
FAIR = {
    "bp (glorot head, lr 1e-3)": {RULE: "bp", HEAD: "glorot", LR: 1e-3},
    "svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)": {RULE: "svd-bp", **SSA, LR: 3e-4},
    "dfa (zero head, lr 3e-4)": {RULE: "dfa", HEAD: "zero", LR: 3e-4},
    "ssa (glorot head, beta 0.01, gamma 0, lr 1e-3; chain)": {RULE: "ssa", **SSA},
}


def learned_variants(long=False):
    """Direct rules whose feedback learns (DKP, SSA-DKP) beside the fair rows."""
    # the repository's feedback schedule (webstah/dkp-gist): Adam 1e-4, x0.8 an epoch
    rate, decay = "rule.feedback_lr", "rule.feedback_decay"
    paper = {rate: 1e-4, decay: 0.8, "rule.feedback_weight_decay": 1e-6}
    dkp = {RULE: "dkp", HEAD: "zero", LR: 3e-4, **paper}
    ssa_dkp = {RULE: "ssa-dkp", FEEDBACK: "chain", **paper, **SSA}
    rows = dict(FAIR)
    rows.update({
        "ssa, global route (the learned one's control)": {RULE: "ssa", FEEDBACK: "global",
                                                           **SSA},
        "dkp (zero head, lr 3e-4; feedback Adam 1e-4, x0.8 an epoch)": dict(dkp),
        "dkp, glorot head": {**dkp, HEAD: "glorot"},
        "dkp, no feedback decay": {**dkp, decay: 1.0},
        "ssa-dkp (chain's matrices, learned)": dict(ssa_dkp),
        "ssa-dkp, global route's matrices, learned": {**ssa_dkp, FEEDBACK: "global"},
        "ssa-dkp, no feedback decay": {**ssa_dkp, decay: 1.0},
        "dkp, feedback lr 1e-3": {**dkp, rate: 1e-3},
        # the control for learning: dkp's matrices (their initial scale) held still
        "dkp, feedback frozen (lr 1e-12): dfa with dkp's initial matrices": {**dkp, rate: 1e-12},
        "ssa-dkp, feedback lr 1e-3": {**ssa_dkp, rate: 1e-3},
        # the alignment term pulls U towards the fixed B_U while the learned D moves away
        "ssa-dkp, beta 0": {**ssa_dkp, BETA: 0.0},
    })
    if long:
        rows["dfa, lr 1e-3 (its better rate at 20 epochs)"] = {RULE: "dfa", HEAD: "zero",
                                                               LR: 1e-3}
        rows["dkp, lr 1e-3"] = {**dkp, LR: 1e-3}
    return rows


def heads_variants():
    """Modules that learn from their own trained heads (the local route), plain
    layers and SSA's, against BP and the best direct rule, every row at lr 1e-3."""
    head, sim = "rule.readout_head", "rule.readout_sim"
    trained, depth = "rule.readout_trained", "rule.readout_depth"
    grid = "rule.readout_grid"
    plain = {RULE: "dfa", FEEDBACK: "local", HEAD: "zero", LR: 1e-3}
    ssa = {RULE: "ssa", FEEDBACK: "local", **SSA}
    return {
        "bp (glorot head, lr 1e-3)": FAIR["bp (glorot head, lr 1e-3)"],
        "local linear heads, plain layers": {**plain, trained: True},
        "local conv heads (DGL-style), plain layers": {**plain, head: "conv"},
        # the control of "ssa, local conv heads, beta 0" that differs in the layers' form
        # only: the same glorot classifier (ssa's default) on plain layers
        "local conv heads, plain layers, glorot head": {**plain, head: "conv", HEAD: "glorot"},
        "ssa, local linear heads": {**ssa, trained: True},
        "ssa, local conv heads": {**ssa, head: "conv"},
        # beta pulls U, V towards the initial feedback factors, which a head never reads
        "ssa, local conv heads, beta 0": {**ssa, head: "conv", BETA: 0.0},
        # DGL's deeper auxiliary heads: two hidden convolutions
        "local conv heads, depth 2, plain layers": {**plain, head: "conv", depth: 2},
        "ssa, local conv heads depth 2, beta 0": {**ssa, head: "conv", BETA: 0.0, depth: 2},
        # predsim (Noekland & Eidnes 2019): the prediction loss weighted 0.01 and the
        # similarity matching of a trained 3x3 projection 0.99, as their reference code
        "local predsim heads (linear pred + sim 0.99), plain layers": {
            **plain, trained: True, sim: 0.99},
        "local conv heads + sim 0.99, plain layers": {**plain, head: "conv", sim: 0.99},
        "ssa, local predsim heads, beta 0": {**ssa, trained: True, BETA: 0.0, sim: 0.99},
        "ssa, local conv heads + sim 0.99, beta 0": {**ssa, head: "conv", BETA: 0.0,
                                                     sim: 0.99},
        # the read-out's pooled grid: 4x4 keeps the spatial layout a 2x2 grid averages away
        "local conv heads, 4x4 grid, plain layers": {**plain, head: "conv", grid: 4},
        "ssa, local conv heads, 4x4 grid, beta 0": {**ssa, head: "conv", BETA: 0.0, grid: 4},
        # AugLocal's heads (Ma et al. 2024): shaped like the later modules, shallower with
        # depth; at depth 3 module 0's head has the shape of the whole later network.
        # The plain row keeps ssa's glorot classifier: the two differ in the layers' form only
        "local later-shaped heads (AugLocal-style), depth 3, plain layers": {
            **plain, head: "later", depth: 3, HEAD: "glorot"},
        "ssa, local later-shaped heads, depth 3, beta 0": {**ssa, head: "later", BETA: 0.0,
                                                           depth: 3},
        # issue 36 item 2: does a direct error term add anything to a good head? The
        # later-shaped rows above with the global route's term (DFA's fixed D_i on plain
        # layers, SSA's from its factors) added at weight 1: each differs in that only
        "local later-shaped heads + DFA's direct term, depth 3, plain layers": {
            **plain, head: "later", depth: 3, HEAD: "glorot", FEEDBACK: "local_global"},
        "ssa, local later-shaped heads + its direct term, depth 3, beta 0": {
            **ssa, head: "later", BETA: 0.0, depth: 3, FEEDBACK: "local_global"},
        # svd-bp's 3.6 points under BP at 20 epochs, one suspect at a time
        "svd-bp, beta 0 (lr 3e-4)": {
            **FAIR["svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)"], BETA: 0.0},
    }
