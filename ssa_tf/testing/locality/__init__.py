"""Locality proven over a whole run, by record and replay (docs/ALGORITHM.md §3a).

    from ssa_tf.testing import locality
    scenario = locality.Scenario("ssa", epochs=3, cut_after=1, resume=(2, 1))
    report = locality.check(scenario, tmp_path)
    assert not report.disagreements(), report.text()

**Record.** A small run through the real entry, ``ssa_tf.training.run.train``: its
``fit_loop`` with the run's callbacks, its checkpoints, a rank cut inside the run (the
``RankPruning`` callback), and with ``resume`` the run stopped mid-epoch and started
again, from its checkpoint, by a second ``run.train``. A ``Recorder`` callback keeps:

* the whole state before and after every step, and after every epoch (after the rank
  cut, before the checkpoint). The state is found by walking every object reachable
  from the model, its rule and its route (attributes, lists, dicts, recursively; a
  library's internals excepted): every Keras variable, ``tf.Variable``, eager tensor
  and numpy array, not a list of known attributes;
* the batch, and for every module each call's input and output and the gradient that
  output received (the module's signal, ``d loss / d h_i``).

**Replay.** Every step, once per module i, in a replica built from the same settings
(``Replica``; the run's last model itself at its final ranks), one real ``train_step`` on
the recorded batch, in which:

* module i holds its recorded state (parameters, optimizer moments, dropout seeds, norm
  statistics, its learned feedback) and computes from its recorded input;
* the head returns, call by call, the recorded logits (so the output error e is the run's)
  and the module before i its recorded output (module i's input);
* every other module returns random activations, and every module but i holds random
  forward state (weights, statistics, seeds and their optimizer moments); gradients still
  flow through each module's own computation, with those random weights;
* the feedback state (everything that is not a module's forward state, an optimizer
  moment of one, a metric or the clock: fixed matrices, feedback factors, chain matrices, a
  learned feedback and its moments, anything a rule hides on itself) and the clock are the
  recorded ones.

Module i's state after the step and its signal must be the run's, bit for bit
(``DEPENDS``: any read of another module's weights or activations, a gated chain, a chain
recomputed from the forward factors, shows here); so must the signals of the two modules
whose outputs are recorded, whose own weights are random (``SIGNAL``: a signal that reads
the module's own forward weights), and the feedback state after the step (``FEEDBACK``; a
learned feedback where its module's output is recorded). Over the replays each module's
signal and learned feedback are replayed with its own weights random and every other
module's weights and activations random in turn. And, without replay:

* *fixed feedback* (``CHANGED``): for every step, the feedback state before and after
  (a learned feedback aside when the card says it learns);
* *between steps* (``BETWEEN``): nothing changes between one step and the next, nor at an
  epoch's end without a cut;
* *at a rank cut* (``CUT``): the feedback factors must be what the card's ``at_cuts``
  says (their slots chosen by the forward energy, their first r columns, or their own
  best rank r), computed here from the recorded state, and every other feedback state
  what the replica's ``feedback_changed`` derives from them with random forward weights;
* *at the resume* (``RESUME``): the restored state must be the checkpointed one.

A finding is a disagreement with the card unless the card says so: a sequential rule
must show ``DEPENDS`` (the harness confirms the card by finding the dependency), a rule
whose feedback copies the forward weights ``FEEDBACK``, one whose feedback is the forward
weights ``SIGNAL``; a direct rule must show none (``Report.disagreements``).

What it does not prove: behaviour on steps, settings or shapes the run did not take (a
leak that first acts after the run's last step; a module whose own forward reads another
module's weight in a way that leaves the recorded values unchanged); it runs eagerly
(``tf.config.run_functions_eagerly``), as compiled steps are not bit-for-bit comparable.

The package: ``scenarios`` (``Scenario``, ``variants``, ``registry_scenarios``, the
``Report``), ``recording`` (``record``, ``Recorder``), ``replica`` (``Replica``),
``replay`` (``replay``, ``Replay``), ``state`` (``walk``, the kinds and the roles); this
module re-exports them and holds ``check``.
"""

from __future__ import annotations

from .recording import (EpochEnd, Record, Recorder, Start, Step, _Calls, _stop_at,
                        _Stopped, capture, record)
from .replay import Replay, _Stop, replay
from .replica import Replica
from .scenarios import (Finding, Report, Scenario, harness_context, registry_scenarios,
                        variants)
from .state import (BETWEEN, CHANGED, CLOCK, CUT, DEPENDS, FEEDBACK, FEEDBACK_ROLE, KINDS,
                    LEARNING, METRIC, OPAQUE, RESUME, SAVING_RECORDS, SELF, SIGNAL,
                    HarnessError, Item, _difference, _is_opaque, _random_like, _same,
                    model_roots, snapshot, walk)


def check(scenario, workdir, until=None, card=None) -> "Report":
    """Record ``scenario`` in ``workdir`` and replay it (``record``, ``replay``)."""
    with harness_context(scenario):
        rec = record(scenario, workdir)
        return replay(rec, until=until, card=card)
