"""Replaying a record: every step, once per module, checked against the run.

``replay`` and ``Replay``: pass 1, without replay, every transition outside the steps
(``BETWEEN``, ``CUT``, ``RESUME``) and each step's fixed feedback (``CHANGED``); pass 2,
every step replayed module by module in a ``Replica`` (``DEPENDS``, ``SIGNAL``,
``FEEDBACK``, ``SELF``).
"""

from __future__ import annotations

import numpy as np

from .recording import EpochEnd, Record, Start, Step
from .replica import Replica
from .scenarios import Finding, Report
from .state import (BETWEEN, CHANGED, CLOCK, CUT, DEPENDS, FEEDBACK, LEARNING, METRIC,
                    RESUME, SELF, SIGNAL, _difference, _random_like, _same)


class _Stop(Exception):
    pass


class Replay:
    def __init__(self, rec: Record, card, until=None, tolerance=None):
        self.rec, self.card = rec, card
        self.report = Report(rec.scenario, card)
        self.until, self.tolerance = until, tolerance
        self._replicas = {}
        self.rng = np.random.default_rng(20261206)

    def replica(self, ranks) -> Replica:
        """The replica at ``ranks``: the run's last model itself (its state is set from the
        record before every use) when it has them, else a new one."""
        key = tuple(sorted((ranks or {}).items()))
        if key not in self._replicas:
            last = self.rec.model
            known = next(iter(self._replicas.values())).roles if self._replicas else None
            if last is not None and last.ranks() == (ranks or {}):
                self._replicas[key] = Replica(self.rec, ranks, model=last, roles=known)
            else:
                self._replicas[key] = Replica(self.rec, ranks, roles=known)
        return self._replicas[key]

    def find(self, kind, where, detail):
        self.report.findings.append(Finding(kind, where, detail))
        if self.until is not None and set(self.until) <= self.report.kinds():
            raise _Stop()

    def compare(self, kind, where, keys, got, want):
        """A finding for each of ``keys`` whose value in ``got`` is not ``want``'s."""
        for k in keys:
            if k not in want or k not in got:
                self.find(kind, where, f"{k}: absent {'from the run' if k not in want else ''}")
            elif not _same(got[k], want[k], self.tolerance):
                self.find(kind, where, f"{k}: {_difference(got[k], want[k])}")

    def run(self) -> Report:
        try:
            self._run()
        except _Stop:
            pass
        return self.report

    def _run(self):
        """Pass 1, no replay: every transition outside the steps, and each step's fixed
        feedback. Pass 2: every step replayed module by module."""
        # the roles of the state: the run's last model's (keys are the same at every rank)
        self.last = self.replica(self.rec.model.ranks())
        epoch_ends, previous = {}, None
        for event in self.rec.events:
            if isinstance(event, Start):
                if event.segment > 0:
                    self._resume(event, epoch_ends)
            elif isinstance(event, Step):
                self._between(previous, event)
                self._fixed(event)
                self.report.steps += 1
            elif isinstance(event, EpochEnd):
                epoch_ends[(event.segment, event.epoch)] = event
                self._epoch_end(previous, event)
            previous = event
        steps, every = self.rec.steps, self.rec.scenario.replay_every
        for n, step in enumerate(steps):
            if self._confirmed():
                return  # a sequential card's findings are all shown: the rest adds nothing
            if n % every == 0 or n == len(steps) - 1:
                self._replay(step)
                self.report.replayed += 1

    # -- transitions outside steps ----------------------------------------------
    def _kept(self):
        """Every key but the metrics'."""
        return [k for k, r in self.last.roles.items() if r != METRIC]

    def _between(self, previous, step):
        """Nothing changes from the previous event (start, step, epoch end) to a step."""
        state = previous.after if isinstance(previous, Step) else previous.state
        self.compare(BETWEEN, f"before {step.name}", self._kept(), step.before, state)

    def _epoch_end(self, previous, end):
        if not isinstance(previous, Step):
            return
        if (end.ranks, end.live) == (previous.ranks, previous.live):  # no cut: it stays
            self.compare(BETWEEN, f"end of epoch {end.epoch + 1}", self.last.feedback,
                         end.state, previous.after)
            return
        self.report.cuts += 1
        self._cut(previous, end)

    def _resume(self, start, epoch_ends):
        """The restored state is the checkpoint's: the state at the end of the last epoch
        the stopped run finished (its checkpoint)."""
        self.report.resumes += 1
        done = [e for (seg, _), e in epoch_ends.items() if seg == start.segment - 1]
        if done:
            saved = max(done, key=lambda e: e.epoch)
            self.compare(RESUME, f"resume of run {start.segment}", self._kept(), start.state,
                         saved.state)

    # -- a rank cut ---------------------------------------------------------------
    def _cut(self, before, end):
        """The feedback factors after the cut are what the card states, computed here from
        the recorded state; every other piece of feedback state is what the replica's
        ``feedback_changed`` derives from them, its forward weights random. A cut in place
        (``rank.cut_form``) computes the same at the live slots and zeroes the rest."""
        from ssa_tf.nn.svd import (exact_singular_values, live_slots, resolve_feedback_cut,
                                   slot_order)

        where = f"rank cut after epoch {end.epoch + 1}"
        if not getattr(self.card, "at_cuts", None):
            self.find(CUT, where, "the card does not say what a cut passes to the feedback")
        cfg = self.rec.cfg
        mode = resolve_feedback_cut(cfg.rank.feedback_cut,
                                    True if cfg.rank.energy == "outputs" else None)
        old, new = before.after, end.state
        in_place = cfg.rank.cut_form == "in_place"
        expected = {}
        for layer in self.last.model.svd_layers():
            keys = {n: f"var:{getattr(layer, n).path}" for n in ("U", "s", "V", "B_U", "B_s",
                                                              "B_V")}
            r_old, r = before.live[layer.name], end.live[layer.name]
            # the slots the cut reads: the live ones of a cut in place, else all
            fwd = [old[keys[n]].astype(np.float64) for n in ("U", "s", "V")]
            live = live_slots(*fwd) if in_place else np.arange(len(fwd[1]))
            fwd = [f[..., live] for f in fwd]
            B = [old[keys[n]][..., live] for n in ("B_U", "B_s", "B_V")]
            U_new = new[keys["U"]][..., live[:r]]  # a re-factoring cut writes the first slots
            kept = np.arange(r)
            if r == r_old:
                fb, kept = B, np.arange(len(live))
            elif mode == "slots":
                kept = np.sort(slot_order(*fwd)[:r])
                fb = [b[..., kept] for b in B]
            elif mode == "first":
                fb = [b[..., :r] for b in B]
            else:  # svd: its own best rank r, each column's sign matched to the forward's
                bu, bs, bv = exact_singular_values(*B)
                bu, bs, bv = bu[:, :r], bs[:r], bv[:, :r]
                got = new[keys["B_U"]][..., live[:r]].astype(np.float64)
                flip = np.where(np.sum(bu * U_new, axis=0) < 0, -1.0, 1.0)
                # a column whose sign test is a tie may go either way
                ties = np.abs(np.sum(bu * U_new, axis=0)) < 1e-6
                own = np.where(np.sum(got * bu, axis=0) < 0, -1.0, 1.0)
                flip = np.where(ties, own, flip)
                fb = [bu * flip, bs, bv * flip]
            for n, value in zip(("B_U", "B_s", "B_V"), fb):
                if in_place:  # the rest of the slots zero
                    value, full = np.asarray(value), np.zeros_like(old[keys[n]])
                    full[..., live[kept]] = value
                    value = full
                expected[keys[n]] = np.asarray(value, np.float32)
        self.compare(CUT, where, sorted(expected), new, expected)
        # everything else the feedback holds: derived from the cut factors alone
        replica = self.replica(end.ranks)
        state = dict(old)
        state.update({k: v for k, v in new.items() if replica.roles.get(k) in (CLOCK, METRIC)
                      or (isinstance(replica.roles.get(k), tuple)
                          and replica.roles[k][0] == "own")})
        state.update(expected)
        replica.load(state, replica.forward, self.rng)
        replica.model.feedback_changed()
        after = {k: item.value() for k, item in replica.items.items()}
        rest = [k for k in replica.feedback if k not in expected]
        self.compare(CUT, where, rest, after, new)

    # -- a step -------------------------------------------------------------------
    def _fixed(self, step):
        """A fixed feedback does not change in a step (a learned one aside, when the card
        says it learns)."""
        learns = self.card.feedback in LEARNING
        fixed = [k for k in self.last.feedback if not (learns and k in self.last.learned)]
        self.compare(CHANGED, step.name, fixed, step.after, step.before)

    def _replay(self, step):
        """Module by module, a real step of the replica in which module i holds its
        recorded state and computes from its recorded input, the head returns the recorded
        logits (so e is the run's), and every other module holds random forward state and
        returns random activations (the module before i: its recorded output, module i's
        input). Module i's state after the step and its signal (``DEPENDS``), the signals of
        the modules whose outputs are the run's (``SIGNAL``: their own weights random) and
        the feedback state (``FEEDBACK``; a learned one where its module's output is the
        run's) must be the run's. Over the replays, each module's signal and learned
        feedback are replayed with its own weights random, and every other module's
        weights and activations random in turn."""
        replica = self.replica(step.ranks)
        n = len(replica.model.local_modules)
        for i in range(n):
            if self._confirmed():
                return
            kept = {i - 1, n - 1} - {-1, i}  # outputs replayed as recorded (besides i's)
            outputs = [list(step.outputs[j]) if j in kept or j == i else
                       _random_calls(step.outputs[j], self.rng) for j in range(n)]
            others = [k for k in replica.forward if k not in replica.own(i)]
            replica.load(step.before, others, self.rng)
            calls, after = replica.step(step, real=(i,), outputs=outputs)
            here = f"{step.name}, module {i} replayed"
            self._extra_calls(calls, here)
            for k, (got, want) in enumerate(zip(calls.outputs[i], step.outputs[i])):
                if not _same(got, want, self.tolerance):
                    self.find(SELF, here, f"call {k + 1}: output {_difference(got, want)}")
            self._signals(DEPENDS, here, calls.signals[i], step.signals[i])
            self.compare(DEPENDS, here, replica.own(i), after, step.after)
            for j in sorted(kept):
                self._signals(SIGNAL, f"{here}, module {j}'s signal", calls.signals[j],
                              step.signals[j])
            feedback = [k for k in replica.feedback if k not in replica.learned or
                        any(k in replica.own(j) for j in kept)]
            self.compare(FEEDBACK, here, feedback, after, step.after)

    def _confirmed(self) -> bool:
        """A sequential card's expected findings are all in (nothing more to learn)."""
        card, kinds = self.card, self.report.kinds()
        if not card.sequential or DEPENDS not in kinds:
            return False
        if card.feedback == "copies the forward weights" and FEEDBACK not in kinds:
            return False
        return card.feedback != "is the forward weights" or SIGNAL in kinds

    def _signals(self, kind, where, got, want):
        if len(got) != len(want):
            self.find(kind, where, f"{len(got)} calls where the run made {len(want)}")
            return
        for k, (a, b) in enumerate(zip(got, want)):
            if not _same(a, b, self.tolerance):
                self.find(kind, where, f"call {k + 1}: signal {_difference(a, b)}")

    def _extra_calls(self, calls, where):
        if calls.extra_calls:
            self.find(SELF, where, f"modules {sorted(set(calls.extra_calls))} called more "
                      "often than in the run")


def _random_calls(calls, rng) -> list:
    """One random activation for a module's calls in a step (the first pass's and its
    replay's alike): a call on a slice of the batch (``rule.replay_slices``) returns its
    slice of it, the slices in the order they were called."""
    whole, start, out = _random_like(calls[0], rng), 0, []
    for call in calls:
        if call.shape == whole.shape:
            out.append(whole)
            continue
        out.append(whole[start:start + len(call)])
        start = (start + len(call)) % len(whole)
    return out


def replay(rec: Record, until=None, card=None, tolerance=None) -> Report:
    """Replay ``rec`` (call inside ``harness_context``): the findings, judged against
    ``card`` (the run's, ``cfg.card()``, by default); ``until`` (kinds): stop once each
    has been found (a mutant's test); ``tolerance``: compare floats to that relative
    tolerance instead of bit for bit."""
    card = card or rec.cfg.card()
    return Replay(rec, card, until, tolerance).run()
