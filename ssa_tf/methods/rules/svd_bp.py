"""svd-bp: backpropagation through the SVD-factored network (the parametrization's control).

It differs from SSA in the rule only: the same SVD layers, head and loss terms, so that
the gap between the two is the rule's.
"""

from ssa_tf.methods.card import LocalityCard
from ssa_tf.methods.spec import FACTOR_CHOICES, FACTOR_OPTIONS, RuleSpec


def implementation():
    from ssa_tf.methods.base import EndToEnd
    return EndToEnd


SPEC = RuleSpec(
    "svd-bp", "backpropagation through the SVD-factored network, with SSA's alignment and "
    "orthogonality terms (the control for the parametrization)",
    dict(alpha=1.0, feedback_init="forward", **FACTOR_OPTIONS),
    # the rate chosen as SSA's was, on the validation split at SSA's head and terms:
    # 3e-4 (0.556 +- 0.011) against 1e-3 (0.509 +- 0.019; benchmarks/reports/recipe_5ep.md)
    3e-4,
    lambda o: LocalityCard("svd-bp", True, "continuously", "all modules",
                           "the true gradient through the SVD-factored network",
                           "is the forward weights"),
    implementation, svd=True, end_to_end=True, choices=FACTOR_CHOICES)
