"""fa: feedback alignment (Lillicrap 2016) through the SVD feedback factors: sequential.

The error goes back through the fixed feedback factors gated by the later modules'
forward pass (their ReLUs and, with ``chain_jacobians``, their norms' current gains).
"""

import functools

from ssa_tf.methods.card import LocalityCard
from ssa_tf.methods.spec import FACTOR_CHOICES, FACTOR_OPTIONS, RuleSpec, transport


@functools.cache
def implementation():
    from ssa_tf.methods.base import Local
    from ssa_tf.methods.routes import ChainRoute

    class FA(Local):
        """Feedback alignment through the fixed feedback factors, gated by the forward pass."""

        def make_route(self):
            return ChainRoute(self.options, gated=True,
                              jacobians=self.options["chain_jacobians"])

    return FA


def card(o):
    # with chain_jacobians each later normalization applies its current gain (gamma)
    # to the signal every step: a continuous read of those forward weights
    return LocalityCard(
        "fa", True, "continuously" if o["chain_jacobians"] else transport(o), "all modules",
        "e back through the fixed feedback factors, gated by the later modules' forward pass"
        + (" and scaled by their current norm gains" if o["chain_jacobians"] else ""))


SPEC = RuleSpec(
    "fa", "feedback alignment through the SVD feedback factors (sequential)",
    dict(alpha=1.0, feedback_init="forward", chain_jacobians=True, **FACTOR_OPTIONS), 3e-4,
    card, implementation, svd=True, choices=FACTOR_CHOICES)
