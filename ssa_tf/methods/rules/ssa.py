"""ssa: SVD-space alignment, direct and transport-free (SPEC section 3a).

Each module learns its SVD factors from alpha CE + beta L_align + gamma L_ortho, the
error reaching it through a fixed map built from its own feedback factors (the chain by
default: a fixed linear copy of the later modules, one matrix from e per module).
"""

from ssa_tf.methods.spec import (CHAIN_DTYPES, FACTOR_CHOICES, FACTOR_OPTIONS, READOUT_HEADS,
                                 ROUTES, SPATIAL, RuleSpec, direct_card)


def implementation():
    from ssa_tf.methods.base import Local
    return Local


SPEC = RuleSpec(
    "ssa", "SVD-space alignment: direct, transport-free local learning of SVD factors",
    dict(FACTOR_OPTIONS, alpha=1.0, feedback="chain", feedback_spatial="full",
         feedback_init="forward", readout_grid=2, readout_trained=False,
         readout_head="linear", readout_width=0, readout_depth=1, readout_sim=0.0,
         direct_weight=1.0,
         recompute=True, hold_within_peak=False, chain_dtype="float32", replay_slices=1,
         replay_chained=False),
    1e-3, direct_card("ssa", from_factors=True), implementation, svd=True,
    choices={"feedback": tuple(ROUTES), "feedback_spatial": SPATIAL,
             "readout_head": READOUT_HEADS, "chain_dtype": CHAIN_DTYPES, **FACTOR_CHOICES})
