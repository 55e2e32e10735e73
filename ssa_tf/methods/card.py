"""Locality cards: what a learning rule computes, said in three answers.

A rule is what it computes, not what it is called. Every rule carries a card,
printed at start-up, stored in ``config.json`` and ``summary.json`` and shown
as columns in every results table:

* **sequential**: does module i's signal need a pass through the modules after
  it, with their current weights or activations? (BP and feedback alignment:
  yes. DFA, SSA's direct routes and local read-outs: no; a *fixed* linear
  feedback network is a fixed matrix from the output error to module i.)
* **weight transport**: does the feedback path ever read the forward weights?
  ``never``; ``once at construction`` (feedback factors copied from each
  layer's initial weight, fixed afterwards); ``continuously`` (BP's backward
  pass uses W^T; a lagging copy of W is the same thing, late).
* **held activations**: what the implementation keeps in memory for one
  step: ``all modules`` (every module's activations until the error is known),
  ``one module at a time`` (plus the module outputs, for a recompute), or
  ``within the largest module's`` (a recompute that keeps the tapes of the modules
  whose tapes fit together in the largest module's instead of replaying them,
  ``rule.hold_within_peak``: the peak of one module at a time, fewer replays);
* **feedback**: ``fixed`` after construction; ``learns locally`` (from the output
  error and the module's own output only: Kolen-Pollack, ``dkp``); ``local head`` (no
  output error at all: a read-out or small head trained with the module on its own
  cross-entropy with the label, dropped at export); ``copies the
  forward weights`` (a lagging copy); ``is the forward weights`` (backprop).
* **at rank cuts** (only on a run that cuts, ``rank.tau``): what a cut passes from the
  forward weights to the feedback factors (``CUT_FLOWS``): which columns stay, and how many.

No TensorFlow import: the CLI prints the card before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses

TRANSPORT = ("never", "once at construction", "continuously")
HELD = ("all modules", "one module at a time", "within the largest module's")
# the held activations in a results table's column
HELD_COLUMNS = {"all modules": "all", "one module at a time": "one",
                "within the largest module's": "within largest"}
FEEDBACK = ("fixed", "learns locally", "local head", "copies the forward weights",
            "is the forward weights")
# what a rank cut passes from the forward weights to the feedback factors, by the resolved
# rank.feedback_cut (docs/ALGORITHM.md §5): the number r of columns kept is always the
# forward weight's energy rank; ``RunConfig.card`` states it when a run cuts
CUT_FLOWS = {
    "slots": "the feedback factors keep their columns at the slots of the r forward "
             "components of largest energy s^2 |u| |v| (which columns, and r, follow the "
             "forward weight)",
    "first": "the feedback factors keep their first r columns (r follows the forward "
             "weight's energy)",
    "svd": "the feedback factors become their own best rank-r approximation (r follows the "
           "forward weight's energy), each column's sign matched to the forward factor's",
}


@dataclasses.dataclass(frozen=True)
class LocalityCard:
    rule: str
    sequential: bool
    weight_transport: str
    held_activations: str
    error: str  # how a non-final module gets its error, in a few words
    feedback: str = "fixed"
    # what a rank cut passes from the forward weights to the feedback (CUT_FLOWS); None:
    # the run makes no cut
    at_cuts: str | None = None

    def __post_init__(self):
        if self.weight_transport not in TRANSPORT:
            raise ValueError(f"weight_transport must be one of {TRANSPORT}")
        if self.held_activations not in HELD:
            raise ValueError(f"held_activations must be one of {HELD}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}")

    @property
    def direct(self) -> bool:
        """Direct and transport-free after construction: docs/ALGORITHM.md §3a's test."""
        return not self.sequential and self.weight_transport != "continuously"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_cuts(self, feedback_cut: str) -> "LocalityCard":
        """This card for a run whose rank cuts cut the feedback factors by ``feedback_cut``
        (resolved: slots, first or svd)."""
        return dataclasses.replace(self, at_cuts=CUT_FLOWS[feedback_cut])

    def line(self) -> str:
        return (f"rule {self.rule}: sequential {'yes' if self.sequential else 'no'}, "
                f"weight transport {self.weight_transport}, held activations "
                f"{self.held_activations}, feedback {self.feedback}; each module's signal: "
                f"{self.error}" + (f"; at rank cuts: {self.at_cuts}" if self.at_cuts else ""))

    # the three columns of a results table
    COLUMNS = ("sequential", "transport", "held")

    def columns(self) -> tuple:
        return ("yes" if self.sequential else "no", self.weight_transport,
                HELD_COLUMNS[self.held_activations])
