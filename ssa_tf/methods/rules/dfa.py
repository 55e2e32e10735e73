"""dfa: direct feedback alignment (Noekland 2016): fixed random feedback, ordinary layers."""

from ssa_tf.methods.spec import (CHAIN_DTYPES, FEEDBACK_INIT, READOUT_HEADS, ROUTES, SPATIAL,
                                 RuleSpec, direct_card)

# the options of every direct rule on ordinary layers
OPTIONS = dict(alpha=1.0, feedback="global", feedback_spatial="full", feedback_init="random",
               readout_grid=2, readout_trained=False, readout_head="linear", readout_width=0,
               readout_depth=1, readout_sim=0.0, direct_weight=1.0,
               recompute=True, hold_within_peak=False, chain_dtype="float32",
               replay_slices=1, replay_chained=False)
CHOICES = {"feedback": tuple(ROUTES), "feedback_spatial": SPATIAL,
           "feedback_init": FEEDBACK_INIT, "readout_head": READOUT_HEADS,
           "chain_dtype": CHAIN_DTYPES}


def implementation():
    from ssa_tf.methods.base import Local
    return Local


SPEC = RuleSpec(
    "dfa", "direct feedback alignment: fixed random feedback, ordinary layers", OPTIONS, 3e-4,
    direct_card("dfa"), implementation, choices=CHOICES,
    head_init="zero")  # a glorot head cost DFA 5 points (benchmarks/reports/recipe_5ep.md)
