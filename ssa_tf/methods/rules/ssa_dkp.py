"""ssa-dkp: SSA whose direct feedback learns, Kolen-Pollack style (``dkp.py``).

SSA's SVD factors and loss terms (alpha CE + beta L_align + gamma L_ortho), the error
reaching each module through a direct matrix D_i that starts as SSA's fixed map (the
chain's J_i^T by default, made of the later modules' feedback factors; or, with
``feedback=global``, the global route's matrix from the module's own feedback factors)
and then trains as DKP trains it: grad D_i = h_i^T e / batch, from the output error and
the module's own output only. The feedback factors B_U, B_s, B_V stay fixed
(the alignment term's target). Direct; transport once at construction, as SSA's.
"""

from ssa_tf.methods.rules import dkp, ssa
from ssa_tf.methods.spec import FACTOR_CHOICES, SPATIAL, RuleSpec, direct_card

OPTIONS = {k: v for k, v in ssa.SPEC.options.items()
           if not k.startswith("readout_") and k not in ("direct_weight", "chain_dtype")}
# (no local routes; its chain's matrices learn, so no fixed chain runs in another dtype)
OPTIONS.update(feedback="chain", **dkp.FEEDBACK_OPTIONS)

SPEC = RuleSpec(
    "ssa-dkp", "SSA whose direct feedback matrices learn from e and each module's own "
    "output (Kolen-Pollack)", OPTIONS, ssa.SPEC.learning_rate,
    direct_card("ssa-dkp", from_factors=True, error=lambda o: dkp.ERROR,
                feedback="learns locally"),
    dkp.implementation, svd=True,
    choices={"feedback": ("chain", "global"), "feedback_spatial": SPATIAL, **FACTOR_CHOICES},
    ranges=dkp.FEEDBACK_RANGES)
