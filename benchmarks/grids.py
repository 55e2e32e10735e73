"""The experiment grids of ``python -m benchmarks.grid``: base settings, variants, seeds.

Every grid validates on the last 10% of the training split (``validation_split``)
and tests once at the end. CIFAR-10 from a TFDS ``data_dir``: with the standard
``tfds build cifar10`` (50,000 / 10,000) the splits are train[:45000] to
train, train[45000:] to validate and the official test set; the data folder
prepared for this project has 45,000 / 5,000 (its ``test`` split is 5,000
held-out training images), so there it is train[:40500], train[40500:] and
those 5,000. Each report names the splits it used.
"""

from __future__ import annotations

from benchmarks.deploy_grids import DEPLOY_GRIDS
from benchmarks.variants import (BETA, CIFAR, CONV, FEEDBACK, GAMMA, HEAD, LONG, LR,
                                 RULE, RULES, SEEDS, SHORT, SSA, heads_variants,
                                 learned_variants, recipe_variants)

GRID, TRAINED = "rule.readout_grid", "rule.readout_trained"



GRIDS = {
    "heads_20ep": dict(
        caption="Modules that learn from their own trained heads (the local route: no output "
                "error, no gradient across modules), plain layers and SSA's SVD layers with "
                "its terms (smallconv, first 10,000 training images with augmentation, 20 "
                "epochs).",
        base={**LONG},
        seeds=SEEDS,
        variants=heads_variants()),
    # direct rules whose feedback learns from local quantities (DKP and SSA's)
    "learned_5ep": dict(
        caption="Direct rules whose feedback learns (Kolen-Pollack), against the fair rows of "
                "recipe_5ep (smallconv, first 10,000 training images, 5 epochs, no "
                "augmentation).",
        base={**SHORT},
        seeds=SEEDS,
        variants=learned_variants()),
    "learned_20ep": dict(
        caption="Direct rules whose feedback learns, at the longer budget (smallconv, first "
                "10,000 training images with the paper's augmentation, 20 epochs).",
        base={**LONG},
        seeds=SEEDS,
        variants=learned_variants(long=True)),

    # the chain's linear network in bfloat16 (rule.chain_dtype), run by its transpose as
    # at ImageNet size (at 10 classes it would be cached): does SSA learn the same?
    "chain_dtype": dict(
        caption="SSA's chain computed in float32 and in bfloat16, both by the chain's "
                "transpose (not cached), as at ImageNet size (smallconv, first 10,000 "
                "training images, 5 epochs, no augmentation).",
        base={**SHORT, RULE: "ssa"},
        seeds=SEEDS,
        chain_cache=False,
        variants={"ssa, chain in float32 (by its transpose)": {},
                  "ssa, chain in bfloat16 (by its transpose)": {
                      "rule.chain_dtype": "bfloat16"}}),
    # every convolution's input gradient in bfloat16 (train.error_dtype; SSA's chain too,
    # by its transpose as at ImageNet size): do BP and SSA learn the same?
    "error_dtype": dict(
        caption="BP and SSA with every convolution's input gradient in float32 and in "
                "bfloat16 (SSA's chain too, by its transpose as at ImageNet size; "
                "smallconv, first 10,000 training images, 5 epochs, no augmentation).",
        base={**SHORT, RULE: "ssa"},
        seeds=SEEDS,
        chain_cache=False,
        variants={"bp, float32": {RULE: "bp"},
                  "bp, every input gradient in bfloat16": {RULE: "bp",
                                                           "train.error_dtype": "bfloat16"},
                  "ssa, float32 (the chain by its transpose)": {},
                  "ssa, every input gradient in bfloat16 (the chain too)": {
                      "train.error_dtype": "bfloat16", "rule.chain_dtype": "bfloat16"}}),
    # a credible DFA (and BP's rate). smallconv at a small budget; what the
    # defaults are made of
    "dfa_tuning": dict(
        caption="DFA's first defaults (lr 1e-3), one knob at a time from them, and BP's "
                "rate (smallconv, first 10,000 training images, 5 epochs, no augmentation).",
        base={**SHORT, RULE: "dfa", LR: 1e-3},
        seeds=SEEDS,
        variants={
            "dfa, lr 1e-3 (the first defaults)": {},
            "broadcast feedback": {"rule.feedback_spatial": "broadcast"},
            "glorot head": {HEAD: "glorot"},
            "relu": {"model.activation": "relu"},
            "relu, glorot head, broadcast (the former DFA)": {
                "model.activation": "relu", HEAD: "glorot",
                "rule.feedback_spatial": "broadcast"},
            "lr 3e-4 (the default since)": {LR: 3e-4},
            "lr 2e-3": {LR: 2e-3},
            "batch norm": {"model.norm": "batch"},
            "chain route (random kernels)": {FEEDBACK: "chain"},
            "bp (reference)": {RULE: "bp"},
            "bp, lr 3e-4": {RULE: "bp", LR: 3e-4},
            "bp, lr 3e-3": {RULE: "bp", LR: 3e-3},
        }),
    # which direct SSA rule, at the same small budget
    "ssa_direct": dict(
        caption="Direct, transport-free SSA rules (smallconv, first 10,000 training images, "
                "5 epochs, no augmentation); the tuned DFA, BP and the variants beside them.",
        base={**SHORT},
        seeds=SEEDS,
        variants={
            "bp": {RULE: "bp"},
            "svd-bp": {RULE: "svd-bp"},
            "dfa (defaults: lr 3e-4)": {RULE: "dfa"},
            "dfa, lr 1e-3 (the first default)": {RULE: "dfa", LR: 1e-3},
            "plain layers, local route, trained read-out, lr 1e-3": {
                RULE: "dfa", FEEDBACK: "local", GRID: 4, TRAINED: True, LR: 1e-3},
            "ssa (defaults: chain, lr 1e-3)": {RULE: "ssa"},
            # the convolutions' other matrix view, cheaper at every rank
            "ssa, channel factorization": {RULE: "ssa", CONV: "channel"},
            "svd-bp, channel factorization": {RULE: "svd-bp", CONV: "channel"},
            "ssa, chain, lr 3e-4 (the first default)": {RULE: "ssa", LR: 3e-4},
            # "seed's terms": the paper's loss terms; the name is the key of recorded
            # results (benchmarks/results/ssa_direct.jsonl), so it stays
            "ssa, chain, lr 3e-4, seed's terms (gamma 0.1)": {
                RULE: "ssa", GAMMA: 0.1, LR: 3e-4},
            "ssa, chain, lr 3e-4, no terms": {RULE: "ssa", BETA: 0.0, LR: 3e-4},
            "ssa, global full-map, lr 3e-4, no terms": {
                RULE: "ssa", FEEDBACK: "global", BETA: 0.0, LR: 3e-4},
            "ssa, local, lr 3e-4, fixed read-out": {
                RULE: "ssa", FEEDBACK: "local", GRID: 4, LR: 3e-4},
            "ssa, local, lr 3e-4, trained read-out": {
                RULE: "ssa", FEEDBACK: "local", GRID: 4, TRAINED: True, LR: 3e-4},
            "ssa, local, trained read-out": {
                RULE: "ssa", FEEDBACK: "local", GRID: 4, TRAINED: True},
            "svd-bp, lr 1e-3": {RULE: "svd-bp", LR: 1e-3},
            "bp-lagged-copy": {RULE: "bp-lagged-copy"},
            "fa": {RULE: "fa"},
        }),
    # the parametrization alone: backprop through the SVD factors (svd-bp), one knob
    # at a time, against BP through ordinary layers
    "svd_param": dict(
        caption="The SVD parametrization under backprop (svd-bp) and under SSA's local "
                "route with a trained read-out, one setting at a time (smallconv, first "
                "10,000 training images, 5 epochs, no augmentation).",
        base={**SHORT},
        seeds=SEEDS,
        variants={
            "svd-bp, gamma 0": {RULE: "svd-bp", GAMMA: 0.0},
            "svd-bp, no terms": {RULE: "svd-bp", BETA: 0.0, GAMMA: 0.0},
            "svd-bp, no terms, lr 1e-3": {RULE: "svd-bp", BETA: 0.0, GAMMA: 0.0, LR: 1e-3},
            "svd-bp, no terms, lr 1e-4": {RULE: "svd-bp", BETA: 0.0, GAMMA: 0.0, LR: 1e-4},
            "svd-bp, no terms, s rate x10": {RULE: "svd-bp", BETA: 0.0, GAMMA: 0.0,
                                             "rule.s_rate_scale": 10.0},
            "svd-bp, no terms, Stiefel retraction": {RULE: "svd-bp", BETA: 0.0, GAMMA: 0.0,
                                                     "rule.stiefel_retraction": True},
        }),
    # controls that differ from SSA in one thing, and SSA's own recipe re-chosen. Every
    # setting is spelled out, so a row means the same thing whatever the defaults become.
    # Runs recorded by another grid with the same settings count here too (run keys).
    "recipe_5ep": dict(
        caption="Fair controls and SSA's recipe, one setting at a time (smallconv, first "
                "10,000 training images, 5 epochs, no augmentation). svd-bp rows carry the "
                "head, loss terms and rate of the SSA row they control for.",
        base={**SHORT},
        seeds=SEEDS,
        variants=recipe_variants()),
    "recipe_20ep": dict(
        caption="Fair controls and SSA's recipe at the longer budget (smallconv, first 10,000 "
                "training images with the paper's augmentation, 20 epochs, constant rate).",
        base={**LONG},
        seeds=SEEDS,
        variants=recipe_variants(long=True)),
    # cuts that keep the feedback in register (rank.feedback_cut=slots) and the
    # paper's rate adjustment at cuts (a warm-up over one epoch, 157 steps here), against
    # the paper's exact re-factoring; SSA with a glorot head (recipe_5ep's best)
    "cut_recipe": dict(
        caption="SSA (glorot head, beta 0.01, gamma 0, lr 1e-3) with rank cuts at tau 0.9, the "
                "first layer and the classifier kept: one cut after epoch 10, or a cut every 4 "
                "epochs; the paper's exact re-factoring (feedback cut 'first') against the slot "
                "cut that keeps the feedback in register, with and without a one-epoch rate "
                "warm-up after each cut (smallconv, first 10,000 training images with "
                "augmentation, 20 epochs); the test accuracy is the cut model's.",
        base={**LONG, RULE: "ssa", **SSA, "rank.tau": 0.9, "rank.keep_ends": True},
        seeds=SEEDS,
        variants={
            "no cut": {"rank.tau": None},
            **{f"one cut, {c}{w}": {"rank.start": 10, "rank.interval": 20,
                                    "rank.feedback_cut": c, "rank.warmup_steps": steps}
               for c, w, steps in (("first", "", 0), ("slots", "", 0),
                                   ("slots", ", warm-up", 157))},
            **{f"every 4 epochs, {c}{w}": {"rank.start": 0, "rank.interval": 4,
                                           "rank.feedback_cut": c, "rank.warmup_steps": steps}
               for c, w, steps in (("first", "", 0), ("slots", "", 0),
                                   ("slots", ", warm-up", 157))},
        }),
    # heads_20ep ran every row at a constant rate chosen at 5 epochs; the same rate
    # schedule for BP and the best local rows (a control that differs in the schedule only)
    "heads_recipe": dict(
        caption="BP and the best local-head rows of heads_20ep with the same step decay of "
                "the rate (x0.1 after epoch 15), every other setting as there (smallconv, "
                "first 10,000 training images with augmentation, 20 epochs).",
        base={**LONG, "train.lr_decay_epochs": (15,)},
        seeds=SEEDS,
        variants={**{f"{name}, decay at 15": heads_variants()[name] for name in (
            "bp (glorot head, lr 1e-3)",
            "local later-shaped heads (AugLocal-style), depth 3, plain layers",
            "ssa, local later-shaped heads, depth 3, beta 0")},
            # the SSA row with random feedback factors instead of copies of the initial
            # weights: transport never (they are read only by module 3's read-out init)
            "ssa, local later-shaped heads, depth 3, beta 0, random feedback factors, "
            "decay at 15": {**heads_variants()["ssa, local later-shaped heads, depth 3, "
                                               "beta 0"], "rule.feedback_init": "random"}}),
    # the headline: every rule at its defaults, 20 epochs with augmentation
    "rules_smallconv": dict(
        caption="Every rule at its defaults: smallconv, first 10,000 training images with "
                "the paper's augmentation, 20 epochs at a constant rate, batch 64.",
        base={**LONG},
        seeds=SEEDS,
        variants={**RULES, "dfa, lr 1e-3 (the first default)": {RULE: "dfa", LR: 1e-3}}),
    # the training length: epoch k of a constant-rate run is a k-epoch run
    "length_smallconv": dict(
        caption="BP, DFA and SSA over 50 epochs (smallconv, first 10,000 training images "
                "with augmentation, constant rate).",
        base={**LONG, "train.epochs": 50},
        seeds=SEEDS,
        variants={k: RULES[k] for k in ("bp", "dfa", "ssa")}),
    # the accuracy/size frontier of rank cuts (repeated: every 4 epochs)
    "rank_frontier": dict(
        caption="SSA with rank cuts every 4 epochs (after epochs 4, 8, 12 and 16) at energy "
                "fraction tau, as rules_smallconv otherwise (smallconv, first 10,000 training "
                "images with augmentation, 20 epochs); the test accuracy is the cut model's.",
        base={**LONG, RULE: "ssa", "rank.feedback_cut": "first", "rank.start": 0,
              "rank.interval": 4},
        seeds=SEEDS,
        variants={**{f"tau {t}": {"rank.tau": t, "rank.keep_ends": False}
                     for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"tau {t}, ends kept": {"rank.tau": t} for t in (0.95, 0.9, 0.8)}}),
    # the repeated cuts of rank_frontier collapse every layer to a few components (each cut
    # keeps tau of the energy left by the last, and a direct rule's dense-layer updates have
    # rank <= the number of classes); one cut halfway is the schedule the frontier asks for
    "rank_once": dict(
        caption="SSA cut once, after epoch 10 of 20, at energy fraction tau, as "
                "rank_frontier otherwise (smallconv, first 10,000 training images with "
                "augmentation); the test accuracy is the cut model's.",
        base={**LONG, RULE: "ssa", "rank.feedback_cut": "first", "rank.start": 10,
              "rank.interval": 20},
        seeds=SEEDS,
        variants={**{f"tau {t}": {"rank.tau": t, "rank.keep_ends": False}
                     for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"channel, tau {t}": {"rank.tau": t, CONV: "channel",
                                           "rank.keep_ends": False} for t in (0.9, 0.8)},
                  **{f"tau {t}, ends kept": {"rank.tau": t} for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"channel, tau {t}, ends kept": {"rank.tau": t, CONV: "channel"}
                     for t in (0.8, 0.7)},
                  "channel, no cut": {"rank.tau": None, CONV: "channel"},
                  # tau of each layer's output energy on 8 training batches (rank.energy)
                  **{f"outputs, tau {t}, ends kept": {"rank.tau": t, "rank.energy": "outputs"}
                     for t in (0.99, 0.98)},
                  # only the 512-unit dense layer (72% of the parameters, 2.5% of the
                  # multiply-adds): the convolutions keep full rank
                  **{f"dense only, tau {t}": {"rank.tau": t,
                                              "rank.exempt": ("m1_conv", "m2_conv")}
                     for t in (0.7, 0.5)}}),
    # a cut at tau 0.95 changes the weight by sqrt(0.05) = 22% (Frobenius) at once: many
    # small cuts instead, as gradual magnitude pruning does (Zhu & Gupta 2017)
    "rank_gradual": dict(
        caption="SSA cut after every epoch from epoch 2 at energy fraction tau (18 small "
                "cuts), as rank_frontier otherwise (smallconv, first 10,000 training images "
                "with augmentation, 20 epochs); the test accuracy is the cut model's.",
        base={**LONG, RULE: "ssa", "rank.feedback_cut": "first", "rank.start": 2,
              "rank.interval": 1},
        seeds=SEEDS,
        variants={f"tau {t}": {"rank.tau": t, "rank.keep_ends": False} for t in (0.99, 0.98)}),
    # 16 local modules
    # the learned rule on resnet32 with every training image, as long as a
    # session allows (a run checkpoints every epoch and resumes; the report counts only
    # finished runs, the epochs reached of the others are in their workdirs' metrics.csv)
    "learned_resnet32": dict(
        caption="resnet32 (16 local modules) on all 40,500 training images left by the "
                "validation split, augmentation, 20 epochs, batch 64: the rules at their "
                "defaults and the best local-head rules of heads_20ep (conv heads, and the "
                "later-shaped heads that overtook them).",
        base={**CIFAR, "model.model": "resnet32", "train.epochs": 20, "data.augment": True},
        seeds=(1,),
        variants={"bp": {RULE: "bp", HEAD: "glorot", LR: 1e-3},
                  "dfa": {RULE: "dfa", HEAD: "zero", LR: 3e-4},
                  "dkp": {RULE: "dkp", HEAD: "zero", LR: 3e-4},
                  "ssa": {RULE: "ssa", **SSA},
                  # the two best local rules of heads_20ep (smallconv) when the grid began
                  "local conv heads, plain layers": heads_variants()[
                      "local conv heads (DGL-style), plain layers"],
                  "ssa, local conv heads, beta 0": heads_variants()[
                      "ssa, local conv heads, beta 0"],
                  # the later-shaped heads that overtook them there (0.632 and 0.625)
                  "local later-shaped heads, plain layers": heads_variants()[
                      "local later-shaped heads (AugLocal-style), depth 3, plain layers"],
                  "ssa, local later-shaped heads, beta 0": heads_variants()[
                      "ssa, local later-shaped heads, depth 3, beta 0"]}),
    # the control of answering from module m1's head: that network trained by BP
    "heads_exit": dict(
        caption="The network a local-head run of smallconv computes when it answers from "
                "module m1's head (smallconv's m0 and m1, the conv head), trained by BP "
                "(first 10,000 training images with augmentation, 20 epochs).",
        base={**LONG, "model.model": "benchmarks/networks/smallconv_exit1.py"},
        seeds=SEEDS,
        variants={"bp, lr 1e-3": {RULE: "bp", LR: 1e-3},
                  "bp, lr 1e-3, 4x4 grid": {
                      RULE: "bp", LR: 1e-3,
                      "model.model": "benchmarks/networks/smallconv_exit1_grid4.py"}}),
    "rules_resnet32": dict(
        caption="resnet32 (16 local modules): first 5,000 training images with augmentation, "
                "20 epochs at a constant rate, batch 64.",
        base={**CIFAR, "model.model": "resnet32", "train.epochs": 20,
              "data.max_train_examples": 5000, "data.augment": True},
        seeds=SEEDS,
        variants={k: RULES[k] for k in ("bp", "dfa", "ssa")}),
}
# the deployment grids: cuts of channel-view models and --preset=compact
GRIDS.update(DEPLOY_GRIDS)


def unknown(grid, variant=None):
    """What is wrong with naming grid ``grid`` (and its ``variant``), as one line, or None."""
    if grid not in GRIDS:
        return f"--grid={grid!r} is not a grid; choose from: {', '.join(GRIDS)}"
    if variant is not None and variant not in GRIDS[grid]["variants"]:
        return (f"--variant={variant!r} is not one of grid {grid}'s: "
                f"{', '.join(GRIDS[grid]['variants'])}")
    return None


# The grids before the recipe grids ran under the defaults of their day: a zero classifier head
# for every rule, and for svd-bp, fa and bp-lagged-copy the paper's gamma 0.1 (svd-bp at
# lr 3e-4). Their variants keep those settings, so each row still names what it trained.
_BEFORE_30 = {"svd-bp": {GAMMA: 0.1, LR: 3e-4},
              "fa": {GAMMA: 0.1}, "bp-lagged-copy": {GAMMA: 0.1}}


def _as_recorded(spec):
    base_rule = spec["base"].get(RULE)
    spec["variants"] = {name: {HEAD: "zero",
                               **{k: v for k, v in _BEFORE_30.get(var.get(RULE, base_rule),
                                                                  {}).items()
                                  if k not in spec["base"]},
                               **var}
                        for name, var in spec["variants"].items()}


for _name in ("dfa_tuning", "ssa_direct", "svd_param", "rules_smallconv", "length_smallconv",
              "rank_frontier", "rank_once", "rank_gradual", "rules_resnet32"):
    _as_recorded(GRIDS[_name])
