"""Locality cards proven over whole runs, by record and replay (docs/ALGORITHM.md §3a).

``ssa_tf.testing.locality`` trains a small model through the real entry
(``ssa_tf.training.run.train``: its loop, callbacks and checkpoints; a rank cut inside
the run; a run stopped mid-epoch and resumed from its checkpoint), recording per step the
whole state (found by walking everything reachable from the model, its rule and route),
the batch, and each module's inputs, outputs and signals. It then replays every step once
per module in a replica whose other modules return random activations (the head the
recorded logits) and hold random forward weights: a direct rule's update of module i,
every signal and the whole feedback state must come out bit for bit; a fixed feedback
must not move; a cut must pass to the feedback what the card says and nothing more; a
resume must restore the checkpoint.

Here: every rule of the registry with every route variant its choices allow (read from the
registry: a new rule file is checked with no change to this file), the walk, the cards'
statement of what a rank cut passes to the feedback, and the README's rules table rendered
from the cards. tests/test_locality_leaks.py: the features a run may have, and one mutant
of each kind of leak, each of which must be flagged.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from ssa_tf.methods import registry
from ssa_tf.nn.svd import resolve_feedback_cut
from ssa_tf.testing import locality

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


# --------------------------------------------------------------------------
# Every rule, every route variant: the card holds through a run.
# --------------------------------------------------------------------------

# one step each (every module replayed): what more steps add (moments, after-step hooks,
# cuts, resumes, a leak that waits) is in the features' and the mutants' longer runs
@pytest.mark.parametrize("scenario", locality.registry_scenarios(steps=1),
                         ids=lambda s: s.name)
def test_every_rule_keeps_its_card_through_a_run(scenario, tmp_path):
    report = locality.check(scenario, tmp_path)
    assert report.steps == scenario.epochs * scenario.steps
    assert not report.disagreements(), report.text()


def test_the_scenarios_cover_every_rule_and_route_of_the_registry():
    scenarios = locality.registry_scenarios()
    assert {s.rule for s in scenarios} == set(registry.NAMES)
    for name in registry.NAMES:
        routes = registry.get(name).choices.get("feedback", ())
        covered = {dict(s.options).get("feedback", registry.get(name).options.get("feedback"))
                   for s in scenarios if s.rule == name}
        assert set(routes) <= covered, name


# --------------------------------------------------------------------------
# The walk, the cards, the README.
# --------------------------------------------------------------------------

def test_the_walk_finds_state_wherever_it_is_held():
    class Holder:
        pass

    inner = Holder()
    inner.cache = {"kept": [np.zeros(3), (tf.constant([1.0]), tf.Variable([2.0]))]}
    outer = Holder()
    outer.child, outer.name, outer.loop = inner, "x", None
    inner.parent = outer  # a cycle
    found = locality.walk([("root", outer)])
    assert sorted(found) == ["root.child.cache['kept'][0]", "root.child.cache['kept'][1][0]",
                             "root.child.cache['kept'][1][1]"]


def test_a_run_that_cuts_states_what_the_cut_passes_to_the_feedback():
    from ssa_tf.config import RunConfig
    from ssa_tf.methods.card import CUT_FLOWS

    assert RunConfig().card().at_cuts is None
    assert RunConfig().with_overrides(["rule.name=dfa", "rank.tau=0.9"]).card().at_cuts \
        is None  # no SVD factors, no cut
    for cut, energy, cov in ((None, "weights", None), (None, "outputs", np.eye(2)),
                             ("first", "weights", None), ("svd", "weights", None)):
        sets = ["rank.tau=0.9", f"rank.energy={energy}"] + \
            ([f"rank.feedback_cut={cut}"] if cut else [])
        card = RunConfig().with_overrides(sets).card()
        assert card.at_cuts == CUT_FLOWS[resolve_feedback_cut(cut, cov)]
        assert card.at_cuts in card.line()


def test_readme_rules_table_is_rendered_from_the_cards():
    # the table: python -c "from ssa_tf.methods import registry; print(registry.rules_table())"
    with open(README) as f:
        assert registry.rules_table() in f.read()


def test_fa_card_says_it_reads_the_later_norm_gains():
    # the gated chain applies each later norm's current gamma every step
    assert registry.get("fa").card({}).weight_transport == "continuously"
    assert registry.get("fa").card({"chain_jacobians": False}).weight_transport == \
        "once at construction"
