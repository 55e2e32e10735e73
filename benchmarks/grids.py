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

_CIFAR = dict(dataset="cifar10", batch_size=64, validation_split=0.1)
SEEDS = (1, 2, 3)
# smallconv on the first 10,000 training images: 5 epochs without augmentation, or 20 with
_SHORT = dict(_CIFAR, model="smallconv", epochs=5, max_train_examples=10000, augment=False)
_LONG = dict(_CIFAR, model="smallconv", epochs=20, max_train_examples=10000, augment=True)

# every rule at its defaults
RULES = {"bp": dict(mode="bp"), "svd-bp": dict(mode="svd-bp"), "dfa": dict(mode="dfa"),
         "ssa": dict(mode="ssa"), "fa": dict(mode="fa"),
         "bp-lagged-copy": dict(mode="bp-lagged-copy")}


# SSA's settings before the recipe grids re-chose them (the paper's head of Noekland's DFA,
# the paper's beta)
_OLD_SSA = dict(head_init="zero", beta=0.01, gamma=0.0, learning_rate=1e-3)
# the candidate recipe the recipe grids tried (a glorot head, no alignment term)
_NEW_SSA = dict(head_init="glorot", beta=0.0, gamma=0.0, learning_rate=1e-3)


def _recipe_variants(long=False):
    """The recipe grids' rows: controls that differ from SSA in one thing, and SSA's own
    recipe. ``long``: only what the 20-epoch budget compares."""
    rows = {
        "bp, zero head": dict(mode="bp", head_init="zero", learning_rate=1e-3),
        "bp, glorot head": dict(mode="bp", head_init="glorot", learning_rate=1e-3),
        "dfa (tuned: lr 3e-4), zero head": dict(mode="dfa", head_init="zero",
                                                learning_rate=3e-4),
        "ssa, old default (zero head, beta 0.01, lr 1e-3)": dict(mode="ssa", **_OLD_SSA),
        "svd-bp, as the old ssa (zero head, beta 0.01, gamma 0, lr 1e-3)": dict(
            mode="svd-bp", **_OLD_SSA),
        "ssa, glorot head, beta 0": dict(mode="ssa", **_NEW_SSA),
        "svd-bp, glorot head, beta 0, gamma 0 (as that ssa)": dict(
            mode="svd-bp", **_NEW_SSA),
    }
    if long:
        return {**rows,
                # DFA's better rate at this length (rules_smallconv)
                "dfa, lr 1e-3, zero head": dict(mode="dfa", head_init="zero",
                                                learning_rate=1e-3),
                "ssa, glorot head": dict(mode="ssa", **{**_OLD_SSA, "head_init": "glorot"}),
                "svd-bp, glorot head (as that ssa: beta 0.01, gamma 0)": dict(
                    mode="svd-bp", **{**_OLD_SSA, "head_init": "glorot"}),
                # svd-bp's rate chosen at SSA's terms on recipe_5ep's validation split
                "svd-bp, glorot head (as that ssa), lr 3e-4": dict(
                    mode="svd-bp", **{**_OLD_SSA, "head_init": "glorot",
                                      "learning_rate": 3e-4})}
    return {
        **rows,
        "dfa (tuned: lr 3e-4), glorot head": dict(mode="dfa", head_init="glorot",
                                                  learning_rate=3e-4),
        "ssa, glorot head": dict(mode="ssa", **{**_OLD_SSA, "head_init": "glorot"}),
        "ssa, beta 0": dict(mode="ssa", **{**_OLD_SSA, "beta": 0.0}),
        "ssa, lr 3e-4": dict(mode="ssa", **{**_OLD_SSA, "learning_rate": 3e-4}),
        "ssa, glorot head, beta 0, lr 3e-4": dict(mode="ssa", **{**_NEW_SSA,
                                                                "learning_rate": 3e-4}),
        "svd-bp, glorot head (as that ssa), lr 3e-4": dict(
            mode="svd-bp", **{**_OLD_SSA, "head_init": "glorot", "learning_rate": 3e-4}),
        "svd-bp, glorot head (as that ssa: beta 0.01, gamma 0)": dict(
            mode="svd-bp", **{**_OLD_SSA, "head_init": "glorot"}),
        # an alignment of directions only (1 - cos^2 per singular vector): no pull back
        # towards the initial weight's values
        **{f"ssa, glorot head, cosine alignment, beta {b:g}": dict(
            mode="ssa", align_form="cosine", **{**_OLD_SSA, "head_init": "glorot", "beta": b})
           for b in (0.01, 0.1)},
    }


# the fair rows of the recipe grids (spelled out, so that they share their runs) and the
# rules whose feedback learns
_FAIR = {
    "bp (glorot head, lr 1e-3)": dict(mode="bp", head_init="glorot", learning_rate=1e-3),
    "svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)": dict(
        mode="svd-bp", **{**_OLD_SSA, "head_init": "glorot", "learning_rate": 3e-4}),
    "dfa (zero head, lr 3e-4)": dict(mode="dfa", head_init="zero", learning_rate=3e-4),
    "ssa (glorot head, beta 0.01, gamma 0, lr 1e-3; chain)": dict(
        mode="ssa", **{**_OLD_SSA, "head_init": "glorot"}),
}
_SSA = dict(**{**_OLD_SSA, "head_init": "glorot"})


def _learned_variants(long=False):
    # the repository's feedback schedule (webstah/dkp-gist): Adam 1e-4, x0.8 an epoch
    paper = dict(feedback_lr=1e-4, feedback_decay=0.8, feedback_weight_decay=1e-6)
    dkp = dict(mode="dkp", head_init="zero", learning_rate=3e-4, **paper)
    ssa_dkp = dict(mode="ssa-dkp", feedback="chain", **paper, **_SSA)
    rows = dict(_FAIR)
    rows.update({
        "ssa, global route (the learned one's control)": dict(mode="ssa", feedback="global",
                                                               **_SSA),
        "dkp (zero head, lr 3e-4; feedback Adam 1e-4, x0.8 an epoch)": dict(dkp),
        "dkp, glorot head": dict(dkp, head_init="glorot"),
        "dkp, no feedback decay": dict(dkp, feedback_decay=1.0),
        "ssa-dkp (chain's matrices, learned)": dict(ssa_dkp),
        "ssa-dkp, global route's matrices, learned": dict(ssa_dkp, feedback="global"),
        "ssa-dkp, no feedback decay": dict(ssa_dkp, feedback_decay=1.0),
        "dkp, feedback lr 1e-3": dict(dkp, feedback_lr=1e-3),
        # the control for learning: dkp's matrices (their initial scale) held still
        "dkp, feedback frozen (lr 1e-12): dfa with dkp's initial matrices": dict(
            dkp, feedback_lr=1e-12),
        "ssa-dkp, feedback lr 1e-3": dict(ssa_dkp, feedback_lr=1e-3),
        # the alignment term pulls U towards the fixed B_U while the learned D moves away
        "ssa-dkp, beta 0": dict(ssa_dkp, beta=0.0),
    })
    if long:
        rows["dfa, lr 1e-3 (its better rate at 20 epochs)"] = dict(
            mode="dfa", head_init="zero", learning_rate=1e-3)
        rows["dkp, lr 1e-3"] = dict(dkp, learning_rate=1e-3)
    return rows


def _heads_variants():
    """Modules that learn from their own trained heads (the local route), plain
    layers and SSA's, against BP and the best direct rule, every row at lr 1e-3."""
    plain = dict(mode="dfa", feedback="local", head_init="zero", learning_rate=1e-3)
    ssa = dict(mode="ssa", feedback="local", **_SSA)
    return {
        "bp (glorot head, lr 1e-3)": _FAIR["bp (glorot head, lr 1e-3)"],
        "local linear heads, plain layers": dict(plain, readout_trained=True),
        "local conv heads (DGL-style), plain layers": dict(plain, readout_head="conv"),
        # the control of "ssa, local conv heads, beta 0" that differs in the layers' form
        # only: the same glorot classifier (ssa's default) on plain layers
        "local conv heads, plain layers, glorot head": dict(plain, readout_head="conv",
                                                            head_init="glorot"),
        "ssa, local linear heads": dict(ssa, readout_trained=True),
        "ssa, local conv heads": dict(ssa, readout_head="conv"),
        # beta pulls U, V towards the initial feedback factors, which a head never reads
        "ssa, local conv heads, beta 0": dict(ssa, readout_head="conv", beta=0.0),
        # DGL's deeper auxiliary heads: two hidden convolutions
        "local conv heads, depth 2, plain layers": dict(plain, readout_head="conv",
                                                        readout_depth=2),
        "ssa, local conv heads depth 2, beta 0": dict(ssa, readout_head="conv", beta=0.0,
                                                      readout_depth=2),
        # predsim (Noekland & Eidnes 2019): the prediction loss weighted 0.01 and the
        # similarity matching of a trained 3x3 projection 0.99, as their reference code
        "local predsim heads (linear pred + sim 0.99), plain layers": dict(
            plain, readout_trained=True, readout_sim=0.99),
        "local conv heads + sim 0.99, plain layers": dict(plain, readout_head="conv",
                                                          readout_sim=0.99),
        "ssa, local predsim heads, beta 0": dict(ssa, readout_trained=True, beta=0.0,
                                                 readout_sim=0.99),
        "ssa, local conv heads + sim 0.99, beta 0": dict(ssa, readout_head="conv", beta=0.0,
                                                         readout_sim=0.99),
        # svd-bp's 3.6 points under BP at 20 epochs, one suspect at a time
        "svd-bp, beta 0 (lr 3e-4)": dict(
            _FAIR["svd-bp (glorot head, beta 0.01, gamma 0, lr 3e-4)"], beta=0.0),
    }


GRIDS = {
    "heads_20ep": dict(
        caption="Modules that learn from their own trained heads (the local route: no output "
                "error, no gradient across modules), plain layers and SSA's SVD layers with "
                "its terms (smallconv, first 10,000 training images with augmentation, 20 "
                "epochs).",
        base=dict(_LONG),
        seeds=SEEDS,
        variants=_heads_variants()),
    # direct rules whose feedback learns from local quantities (DKP and SSA's)
    "learned_5ep": dict(
        caption="Direct rules whose feedback learns (Kolen-Pollack), against the fair rows of "
                "recipe_5ep (smallconv, first 10,000 training images, 5 epochs, no "
                "augmentation).",
        base=dict(_SHORT),
        seeds=SEEDS,
        variants=_learned_variants()),
    "learned_20ep": dict(
        caption="Direct rules whose feedback learns, at the longer budget (smallconv, first "
                "10,000 training images with the paper's augmentation, 20 epochs).",
        base=dict(_LONG),
        seeds=SEEDS,
        variants=_learned_variants(long=True)),

    # a credible DFA (and BP's rate). smallconv at a small budget; what the
    # defaults are made of
    "dfa_tuning": dict(
        caption="DFA's first defaults (lr 1e-3), one knob at a time from them, and BP's "
                "rate (smallconv, first 10,000 training images, 5 epochs, no augmentation).",
        base=dict(_CIFAR, model="smallconv", epochs=5, max_train_examples=10000,
                  augment=False, mode="dfa", learning_rate=1e-3),
        seeds=SEEDS,
        variants={
            "dfa, lr 1e-3 (the first defaults)": {},
            "broadcast feedback": dict(feedback_spatial="broadcast"),
            "glorot head": dict(head_init="glorot"),
            "relu": dict(activation="relu"),
            "relu, glorot head, broadcast (the former DFA)": dict(
                activation="relu", head_init="glorot", feedback_spatial="broadcast"),
            "lr 3e-4 (the default since)": dict(learning_rate=3e-4),
            "lr 2e-3": dict(learning_rate=2e-3),
            "batch norm": dict(norm="batch"),
            "chain route (random kernels)": dict(feedback="chain"),
            "bp (reference)": dict(mode="bp"),
            "bp, lr 3e-4": dict(mode="bp", learning_rate=3e-4),
            "bp, lr 3e-3": dict(mode="bp", learning_rate=3e-3),
        }),
    # which direct SSA rule, at the same small budget
    "ssa_direct": dict(
        caption="Direct, transport-free SSA rules (smallconv, first 10,000 training images, "
                "5 epochs, no augmentation); the tuned DFA, BP and the variants beside them.",
        base=dict(_SHORT),
        seeds=SEEDS,
        variants={
            "bp": dict(mode="bp"),
            "svd-bp": dict(mode="svd-bp"),
            "dfa (defaults: lr 3e-4)": dict(mode="dfa"),
            "dfa, lr 1e-3 (the first default)": dict(mode="dfa", learning_rate=1e-3),
            "plain layers, local route, trained read-out, lr 1e-3": dict(
                mode="dfa", feedback="local", readout_grid=4, readout_trained=True,
                learning_rate=1e-3),
            "ssa (defaults: chain, lr 1e-3)": dict(mode="ssa"),
            # the convolutions' other matrix view, cheaper at every rank
            "ssa, channel factorization": dict(mode="ssa", conv_factorization="channel"),
            "svd-bp, channel factorization": dict(mode="svd-bp", conv_factorization="channel"),
            "ssa, chain, lr 3e-4 (the first default)": dict(mode="ssa", learning_rate=3e-4),
            # "seed's terms": the paper's loss terms; the name is the key of recorded
            # results (benchmarks/results/ssa_direct.jsonl), so it stays
            "ssa, chain, lr 3e-4, seed's terms (gamma 0.1)": dict(
                mode="ssa", gamma=0.1, learning_rate=3e-4),
            "ssa, chain, lr 3e-4, no terms": dict(mode="ssa", beta=0.0, learning_rate=3e-4),
            "ssa, global full-map, lr 3e-4, no terms": dict(
                mode="ssa", feedback="global", beta=0.0, learning_rate=3e-4),
            "ssa, local, lr 3e-4, fixed read-out": dict(
                mode="ssa", feedback="local", readout_grid=4, learning_rate=3e-4),
            "ssa, local, lr 3e-4, trained read-out": dict(
                mode="ssa", feedback="local", readout_grid=4, readout_trained=True,
                learning_rate=3e-4),
            "ssa, local, trained read-out": dict(
                mode="ssa", feedback="local", readout_grid=4, readout_trained=True),
            "svd-bp, lr 1e-3": dict(mode="svd-bp", learning_rate=1e-3),
            "bp-lagged-copy": dict(mode="bp-lagged-copy"),
            "fa": dict(mode="fa"),
        }),
    # the parametrization alone: backprop through the SVD factors (svd-bp), one knob
    # at a time, against BP through ordinary layers
    "svd_param": dict(
        caption="The SVD parametrization under backprop (svd-bp) and under SSA's local "
                "route with a trained read-out, one setting at a time (smallconv, first "
                "10,000 training images, 5 epochs, no augmentation).",
        base=dict(_SHORT),
        seeds=SEEDS,
        variants={
            "svd-bp, gamma 0": dict(mode="svd-bp", gamma=0.0),
            "svd-bp, no terms": dict(mode="svd-bp", beta=0.0, gamma=0.0),
            "svd-bp, no terms, lr 1e-3": dict(mode="svd-bp", beta=0.0, gamma=0.0,
                                              learning_rate=1e-3),
            "svd-bp, no terms, lr 1e-4": dict(mode="svd-bp", beta=0.0, gamma=0.0,
                                              learning_rate=1e-4),
            "svd-bp, no terms, s rate x10": dict(mode="svd-bp", beta=0.0, gamma=0.0,
                                                 s_rate_scale=10.0),
            "svd-bp, no terms, Stiefel retraction": dict(mode="svd-bp", beta=0.0, gamma=0.0,
                                                         stiefel_retraction=True),
        }),
    # controls that differ from SSA in one thing, and SSA's own recipe re-chosen. Every
    # setting is spelled out, so a row means the same thing whatever the defaults become.
    # Runs recorded by another grid with the same settings count here too (run keys).
    "recipe_5ep": dict(
        caption="Fair controls and SSA's recipe, one setting at a time (smallconv, first "
                "10,000 training images, 5 epochs, no augmentation). svd-bp rows carry the "
                "head, loss terms and rate of the SSA row they control for.",
        base=dict(_SHORT),
        seeds=SEEDS,
        variants=_recipe_variants()),
    "recipe_20ep": dict(
        caption="Fair controls and SSA's recipe at the longer budget (smallconv, first 10,000 "
                "training images with the paper's augmentation, 20 epochs, constant rate).",
        base=dict(_LONG),
        seeds=SEEDS,
        variants=_recipe_variants(long=True)),
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
        base=dict(_LONG, mode="ssa", **{**_OLD_SSA, "head_init": "glorot"},
                  rank_tau=0.9, rank_keep_ends=True),
        seeds=SEEDS,
        variants={
            "no cut": dict(rank_tau=None),
            **{f"one cut, {c}{w}": dict(rank_start=10, rank_interval=20, rank_feedback_cut=c,
                                        rank_warmup_steps=steps)
               for c, w, steps in (("first", "", 0), ("slots", "", 0),
                                   ("slots", ", warm-up", 157))},
            **{f"every 4 epochs, {c}{w}": dict(rank_start=0, rank_interval=4,
                                               rank_feedback_cut=c, rank_warmup_steps=steps)
               for c, w, steps in (("first", "", 0), ("slots", "", 0),
                                   ("slots", ", warm-up", 157))},
        }),
    # the headline: every rule at its defaults, 20 epochs with augmentation
    "rules_smallconv": dict(
        caption="Every rule at its defaults: smallconv, first 10,000 training images with "
                "the paper's augmentation, 20 epochs at a constant rate, batch 64.",
        base=dict(_LONG),
        seeds=SEEDS,
        variants={**RULES, "dfa, lr 1e-3 (the first default)": dict(mode="dfa",
                                                                    learning_rate=1e-3)}),
    # the training length: epoch k of a constant-rate run is a k-epoch run
    "length_smallconv": dict(
        caption="BP, DFA and SSA over 50 epochs (smallconv, first 10,000 training images "
                "with augmentation, constant rate).",
        base=dict(_CIFAR, model="smallconv", epochs=50, max_train_examples=10000,
                  augment=True),
        seeds=SEEDS,
        variants={k: RULES[k] for k in ("bp", "dfa", "ssa")}),
    # the accuracy/size frontier of rank cuts (repeated: every 4 epochs)
    "rank_frontier": dict(
        caption="SSA with rank cuts every 4 epochs (after epochs 4, 8, 12 and 16) at energy "
                "fraction tau, as rules_smallconv otherwise (smallconv, first 10,000 training "
                "images with augmentation, 20 epochs); the test accuracy is the cut model's.",
        base=dict(_LONG, mode="ssa", rank_feedback_cut="first", rank_start=0, rank_interval=4),
        seeds=SEEDS,
        variants={**{f"tau {t}": dict(rank_tau=t, rank_keep_ends=False)
                     for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"tau {t}, ends kept": dict(rank_tau=t) for t in (0.95, 0.9, 0.8)}}),
    # the repeated cuts of rank_frontier collapse every layer to a few components (each cut
    # keeps tau of the energy left by the last, and a direct rule's dense-layer updates have
    # rank <= the number of classes); one cut halfway is the schedule the frontier asks for
    "rank_once": dict(
        caption="SSA cut once, after epoch 10 of 20, at energy fraction tau, as "
                "rank_frontier otherwise (smallconv, first 10,000 training images with "
                "augmentation); the test accuracy is the cut model's.",
        base=dict(_LONG, mode="ssa", rank_feedback_cut="first", rank_start=10, rank_interval=20),
        seeds=SEEDS,
        variants={**{f"tau {t}": dict(rank_tau=t, rank_keep_ends=False)
                     for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"channel, tau {t}": dict(rank_tau=t, conv_factorization="channel",
                                               rank_keep_ends=False) for t in (0.9, 0.8)},
                  **{f"tau {t}, ends kept": dict(rank_tau=t) for t in (0.95, 0.9, 0.8, 0.7)},
                  **{f"channel, tau {t}, ends kept": dict(rank_tau=t, conv_factorization="channel")
                     for t in (0.8, 0.7)},
                  "channel, no cut": dict(rank_tau=None, conv_factorization="channel"),
                  # tau of each layer's output energy on 8 training batches (rank.energy)
                  **{f"outputs, tau {t}, ends kept": dict(rank_tau=t, rank_energy="outputs")
                     for t in (0.99, 0.98)},
                  # only the 512-unit dense layer (72% of the parameters, 2.5% of the
                  # multiply-adds): the convolutions keep full rank
                  **{f"dense only, tau {t}": dict(rank_tau=t, rank_exempt=("m1_conv", "m2_conv"))
                     for t in (0.7, 0.5)}}),
    # a cut at tau 0.95 changes the weight by sqrt(0.05) = 22% (Frobenius) at once: many
    # small cuts instead, as gradual magnitude pruning does (Zhu & Gupta 2017)
    "rank_gradual": dict(
        caption="SSA cut after every epoch from epoch 2 at energy fraction tau (18 small "
                "cuts), as rank_frontier otherwise (smallconv, first 10,000 training images "
                "with augmentation, 20 epochs); the test accuracy is the cut model's.",
        base=dict(_LONG, mode="ssa", rank_feedback_cut="first", rank_start=2, rank_interval=1),
        seeds=SEEDS,
        variants={f"tau {t}": dict(rank_tau=t, rank_keep_ends=False) for t in (0.99, 0.98)}),
    # 16 local modules
    # the learned rule on resnet32 with every training image, as long as a
    # session allows (a run checkpoints every epoch and resumes; the report counts only
    # finished runs, the epochs reached of the others are in their workdirs' metrics.csv)
    "learned_resnet32": dict(
        caption="resnet32 (16 local modules) on all 40,500 training images left by the "
                "validation split, augmentation, 20 epochs, batch 64, the rules at their "
                "defaults.",
        base=dict(_CIFAR, model="resnet32", epochs=20, augment=True),
        seeds=(1,),
        variants={"bp": dict(mode="bp", head_init="glorot", learning_rate=1e-3),
                  "dfa": dict(mode="dfa", head_init="zero", learning_rate=3e-4),
                  "dkp": dict(mode="dkp", head_init="zero", learning_rate=3e-4),
                  "ssa": dict(mode="ssa", **_SSA)}),
    "rules_resnet32": dict(
        caption="resnet32 (16 local modules): first 5,000 training images with augmentation, "
                "20 epochs at a constant rate, batch 64.",
        base=dict(_CIFAR, model="resnet32", epochs=20, max_train_examples=5000, augment=True),
        seeds=SEEDS,
        variants={k: RULES[k] for k in ("bp", "dfa", "ssa")}),
}


# The grids before the recipe grids ran under the defaults of their day: a zero classifier head
# for every rule, and for svd-bp, fa and bp-lagged-copy the paper's gamma 0.1 (svd-bp at
# lr 3e-4). Their variants keep those settings, so each row still names what it trained.
_BEFORE_30 = {"svd-bp": dict(gamma=0.1, learning_rate=3e-4), "fa": dict(gamma=0.1),
              "bp-lagged-copy": dict(gamma=0.1)}


def _as_recorded(spec):
    mode = spec["base"].get("mode")
    spec["variants"] = {name: {"head_init": "zero",
                               **{k: v for k, v in _BEFORE_30.get(var.get("mode", mode),
                                                                  {}).items()
                                  if k not in spec["base"]},
                               **var}
                        for name, var in spec["variants"].items()}


for _name in ("dfa_tuning", "ssa_direct", "svd_param", "rules_smallconv", "length_smallconv",
              "rank_frontier", "rank_once", "rank_gradual", "rules_resnet32"):
    _as_recorded(GRIDS[_name])
