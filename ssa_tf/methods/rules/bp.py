"""bp: backpropagation, end to end, through ordinary layers (the reference)."""

from ssa_tf.methods.card import LocalityCard
from ssa_tf.methods.spec import RuleSpec


def implementation():
    from ssa_tf.methods.base import EndToEnd
    return EndToEnd


SPEC = RuleSpec(
    "bp", "backpropagation, end to end, ordinary layers", {}, 1e-3,
    lambda o: LocalityCard("bp", True, "continuously", "all modules",
                           "the true gradient, back through every later module",
                           "is the forward weights"),
    implementation, end_to_end=True)
