"""bp-lagged-copy: fa whose feedback factors chase the forward ones (the former SSA default).

After every step B <- B + eta (X - B): the feedback path reads the forward weights
continuously, so this is backprop through a copy of them that lags; not SSA.
"""

import functools

from ssa_tf.methods.card import LocalityCard
from ssa_tf.methods.rules import fa
from ssa_tf.methods.spec import FACTOR_CHOICES, FACTOR_OPTIONS, Range, RuleSpec


@functools.cache
def implementation():
    class LaggedCopyBP(fa.implementation()):
        def after_step(self, model):
            eta = self.options["feedback_tracking"]
            if eta:
                for layer in model.svd_layers():
                    for b, f in ((layer.B_U, layer.U), (layer.B_s, layer.s),
                                 (layer.B_V, layer.V)):
                        b.assign(b + eta * (f - b))
            super().after_step(model)

    return LaggedCopyBP


SPEC = RuleSpec(
    "bp-lagged-copy", "backprop with a lagging copy of the weights in the feedback path "
    "(the former SSA default; not SSA)",
    dict(alpha=1.0, feedback_init="forward", chain_jacobians=True, feedback_tracking=0.1,
         **FACTOR_OPTIONS), 3e-4,
    lambda o: LocalityCard(
        "bp-lagged-copy", True, "continuously", "all modules",
        f"backprop through a copy of the forward weights that lags them (eta "
        f"{o['feedback_tracking']:g} per step)", "copies the forward weights"),
    implementation, svd=True, choices=FACTOR_CHOICES,
    ranges={"feedback_tracking": Range(0, 1)})
