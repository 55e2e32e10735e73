"""The two kinds of learning rule the rule files build on: end to end, and local.

The model (``ssa_tf.training.model.SSAModel``) builds the network and applies one
optimizer step; the rule says how the gradients of that step are computed
and what happens after it:

* ``EndToEnd``: one loss, the true gradient through the whole network (bp,
  svd-bp with SSA's alignment and orthogonality terms);
* ``Local``: each module trains on its own loss, its input stop-gradiented,
  the error reaching it by the rule's route (``routes.py``): the composite
  loss alpha CE + beta L_align + gamma L_ortho for SVD layers.

Each rule is one file in ``rules/`` (``registry.py`` lists them).
"""

from __future__ import annotations

import numpy as np
from keras import ops
import tensorflow as tf

from ssa_tf.methods import holds, losses
from ssa_tf.nn import fast, noise_state, replaying, svd_layers
from ssa_tf.methods.routes import make_route

TERMS = ("CE term", "alignment term", "orthogonality term", "gradient")


class LearningRule:
    """Base: options, card, and the steps every rule shares."""

    def __init__(self, spec, options=None):
        self.spec = spec
        self.name = spec.name
        bad = sorted(k for k, v in dict(options or {}).items()
                     if v is not None and k not in spec.options)
        if bad:
            raise ValueError(f"rule {self.name!r} does not take {', '.join(bad)}")
        self.options = spec.resolve(dict(options or {}))

    @property
    def svd(self) -> bool:
        return self.spec.svd

    @property
    def end_to_end(self) -> bool:
        return self.spec.end_to_end

    def card(self):
        return self.spec.card(self.options)

    def rates(self) -> dict:
        """The rule's own optimizer rates (``training.optimizer.FactorAdam``'s keywords): none."""
        return {}

    def build(self, model):
        """Create the rule's fixed feedback state on ``model`` (after its layers)."""

    def gradients(self, model, x, y, error=None):
        """(list of (grad, var), logits, (CE, align, ortho) terms, (modules, 4) bad flags).

        The logits are the training forward pass's, from which every update was computed
        (the logged loss is their CE, as BP's); a local rule's CE term is its hidden
        modules' signal terms, summed (the head's CE is the loss). ``error`` replaces the
        output error e for the non-final modules (tests use it to hold e fixed)."""
        raise NotImplementedError

    def after_step(self, model):
        if self.options.get("stiefel_retraction"):
            for layer in model.svd_layers():
                for factor in (layer.U, layer.V):
                    factor.assign(losses.stiefel_retract(factor))

    def module_names(self, model):
        return [f"{i} ({m.name})" for i, m in enumerate(model.local_modules)]

    def factor_terms(self, layers):
        """(L_align, L_ortho) summed over ``layers`` (0 for rules without them)."""
        if not self.svd or not layers:
            return 0.0, 0.0
        o = self.options
        lam = o.get("ortho_lambda", 0.0)
        form = o.get("align_form", "factors")
        # a term whose weight is 0 is not computed (nor logged): the orthogonality term's
        # Grams U^T U cost r^2 (N kw) multiply-adds a layer, forward and backward (3.6G
        # for each of resnet18's 512-channel convolutions at full rank), for a 0 * term
        align = (sum(losses.alignment_loss(l, form) for l in layers) if o.get("beta")
                 else 0.0)
        ortho = (sum(losses.orthogonality_loss(l, lam) for l in layers)
                 if o.get("gamma") or lam else 0.0)
        return align, ortho

    def weighted(self, ce, align, ortho):
        o = self.options
        loss = o.get("alpha", 1.0) * ce
        if self.svd:
            loss = loss + o["beta"] * align + o["gamma"] * ortho
        return loss


class EndToEnd(LearningRule):
    """Backpropagation through the whole network (one module)."""

    def module_names(self, model):
        return [f"network ({self.name})"]

    def gradients(self, model, x, y, error=None):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            # Keras's compiled loss, already divided by the replica count
            ce = model._compute_loss(x=x, y=y, y_pred=logits, training=True)
            align, ortho = self.factor_terms(model.svd_layers())
            loss = self.weighted(ce, align / replicas, ortho / replicas)
        variables = model.trainable_variables
        grads = tape.gradient(loss, variables)
        terms = (ce * replicas, align, ortho)
        bad = tf.stack([[*(nonfinite(t) for t in terms), nonfinite(*grads)]])
        return list(zip(grads, variables)), logits, terms, bad


class Local(LearningRule):
    """Each module learns from its own loss; nothing crosses a module boundary."""

    #: the order of a recomputing step's replays (``_recomputed``): "reverse" (the last
    #: module first, each boundary released once its module is done) or "forward"
    replay_order = "reverse"

    #: how many replays ahead a lazily made signal (``routes.Signals``) is asked for: 1, in
    #: the replay before its module's (the chain's step runs beside that replay), its
    #: signal held one replay longer; 0, in its module's own replay (the chain's step
    #: waits for the module before). The first replayed module's is made in its own
    #: replay either way: beside the held modules' tapes the chain's step raised the peak
    #: (resnet18/224, batch 256: 0.49 -> 0.52x BP's; benchmarks/reports/STEP_COST.md)
    signals_ahead = 1

    #: a replay's layer norms read the statistics the first pass computed (``fast.Moments``:
    #: the same values); False: they compute them again
    keep_moments = True

    def __init__(self, spec, options=None):
        super().__init__(spec, options)
        self.route = self.make_route()

    def make_route(self):
        return make_route(self.options, structured=self.svd)

    def build(self, model):
        self.route.build(model, np.random.default_rng(model.seed + 7919))

    def gradients(self, model, x, y, error=None):
        x = model.normalize_input(x)  # raw pixels in (the model's input contract)
        if not self.route.needs_error:
            return self._one_module_at_a_time(model, x, y)
        if self.recomputes:
            return self._recomputed(model, x, y, error)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        tapes, outputs = [], []
        h = x
        for m in model.local_modules:
            tape = tf.GradientTape()
            with tape:
                h = m(ops.stop_gradient(h), training=True)
            tapes.append(tape)
            outputs.append(h)
        logits, error, signals = self._error_and_signals(model, outputs, y, error)
        results = []
        for i, (tape, h) in enumerate(zip(tapes, outputs)):
            with tape:  # re-entering continues recording on module i's tape
                results.append(self._module_step(model, i, tape, h, error, y, signals, replicas))
        return self._collect(results, logits)

    def _error_and_signals(self, model, outputs, y, error=None):
        """The logits, the output error e (given, or from them) and every module's signal."""
        logits = outputs[-1]
        if error is None:
            error = losses.output_error(logits, y, model.num_classes)
        error = ops.stop_gradient(error)
        return logits, error, self.route.signals(model, outputs, error)

    @property
    def recomputes(self) -> bool:
        """The route's signals need only e (not the later modules' activations): the
        forward pass keeps just each module's input, and each module's forward is
        replayed under its own tape once the signals are known."""
        return bool(self.options.get("recompute")) and self.route.direct

    def _recomputed(self, model, x, y, error):
        """One module's activations at a time: a forward pass that keeps only the module
        boundaries, the output error and every module's signal from it, then each
        module's forward replayed under its own tape, its gradient taken and its
        activations released before the next (the order enforced in the graph).

        The replays run from the last module to the first: each module's input (the
        boundary before it) and its signal are released after its replay, so the early,
        large modules (an ImageNet ResNet's stem) replay with the later boundaries already
        gone (``replay_order = "forward"``: first to last, every boundary held until the
        replays reach it, as before; the gradients are the same either way). Each replayed
        module draws its dropout masks from the states its generators had when the first
        pass reached it, and the generators end where the first pass left them, whatever
        the order and whichever modules share a generator.

        With ``hold_within_peak`` the modules whose tapes fit together within the
        largest module's (``holds.plan``: what each backward pass reads) keep them from
        the first pass instead; their gradients come first, then the replays: the same
        peak, fewer forward passes, the same gradients. With ``replay_chained`` the
        replays run first to last, each fed the output of the replay before where that
        module was replayed too (the same values), so the first pass keeps none of those
        boundaries beside the held tapes."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        modules = model.local_modules
        held, cuts = self.held_modules(model), self.replay_slices(model)
        replayed = [i for i in range(len(modules)) if i not in held]
        # each replayed module's dropout masks, drawn again by its replay from its generators'
        # states as the first pass reached them (new masks: its update from other activations
        # than those that made e), and its layer norms' statistics, read again (fast.Moments)
        noise, outputs, tapes, h, moments = {}, [], {}, x, {}
        for i, m in enumerate(modules):
            if i in held:
                tapes[i] = tf.GradientTape()
                with tapes[i]:
                    h = m(ops.stop_gradient(h), training=True)
            else:
                noise[i] = noise_state([m])
                moments[i] = fast.Moments() if self.keep_moments else None
                with fast.keeping(moments[i]):
                    h = ops.stop_gradient(m(h, training=True))
            outputs.append(h)
        after = noise_state([modules[i] for i in replayed])  # where the first pass left them
        logits, error, signals = self._error_and_signals(model, outputs, y, error)
        inputs, held_outputs = [x, *outputs[:-1]], {i: outputs[i] for i in held}
        # the boundaries live on in ``inputs`` only; in a compiled step each is released
        # once its module's replay and gradient have run (eagerly, when the step returns)
        del outputs, h
        results, deps, last = {}, [logits], []
        for i in sorted(held, reverse=True):
            # each held module's backward after the one after it (left to the executor,
            # the first held modules' backward ran beside the later tapes); its signal is
            # not made to wait (only the chain's: a global route's is a product)
            if hasattr(signals, "make") and i < len(signals):
                signals.make(i)
            with tapes[i], tf.control_dependencies(last):  # (re-entering the tape)
                results[i] = self._module_step(model, i, tapes[i], held_outputs[i], error, y,
                                               signals, replicas)
            last = [g for g, _ in results[i][0] if g is not None]
            deps += last
        # chained (rule.replay_chained): first to last, each replay's input the replay
        # before's output where that module was replayed too (the same values), so the
        # first pass's boundary there is read by nothing after it and is released in it
        chained = bool(self.options.get("replay_chained"))
        order = replayed[::-1] if self.replay_order == "reverse" and not chained else replayed
        ahead = self.signals_ahead if hasattr(signals, "make") else 0
        before = {}  # chained: the last replay's output, by its module

        def make_early(k):  # the chain's step for replayed module k, made now
            if k < len(order) and order[k] < len(signals):  # (the head has none)
                signals.make(order[k])

        for n, i in enumerate(order):
            with replaying([modules[i]], noise[i]), tf.control_dependencies(deps):
                if ahead:
                    make_early(n + ahead)
                h = before.pop(i - 1, inputs[i])
                if cuts.get(i, 1) > 1:  # its output, the first pass's, is its gradient's
                    results[i] = self._sliced_step(model, i, h, inputs[i + 1], cuts[i],
                                                   error, y, signals, replicas, moments[i])
                    h = inputs[i + 1]
                else:
                    with tf.GradientTape() as tape:
                        with fast.reading(moments[i]):
                            h = modules[i](tf.identity(h), training=True)
                        results[i] = self._module_step(model, i, tape, h, error, y, signals,
                                                       replicas)
            if chained and i + 1 in replayed:
                before[i] = self._handed_on(model, i, h)
            deps = [g for g, _ in results[i][0] if g is not None]
        if after:
            with tf.control_dependencies(deps):
                for variable, value in after:
                    variable.assign(value)
        return self._collect([results[i] for i in range(len(modules))], logits)

    def _handed_on(self, model, i, h):
        """``rule.replay_chained``: module i's replayed output as the next replay's input
        (its values, cut from module i's tape)."""
        return ops.stop_gradient(h)

    def held_modules(self, model) -> frozenset:
        """The modules a recomputing step holds instead of replaying (``holds.plan``),
        planned again when a rank cut changes the layers."""
        if not self.options.get("hold_within_peak"):
            return frozenset()
        return self._plan(model)[0]

    def replay_slices(self, model) -> dict:
        """{module: the slices of the batch it is replayed in} (``rule.replay_slices``,
        ``holds.plan``); empty for one slice each."""
        if self.options.get("replay_slices", 1) <= 1:
            return {}
        return self._plan(model)[1]

    def _plan(self, model):
        key = (tuple(model.ranks().values()), self.options.get("replay_slices", 1),
               bool(self.options.get("replay_chained")),
               bool(self.options.get("hold_within_peak")))
        if getattr(self, "_held_plan", (None,))[0] != key:
            self._held_plan = (key, holds.plan(model, *key[1:]))
        return self._held_plan[1]

    def _sliced_step(self, model, i, x, h, n, error, y, signals, replicas, moments=None):
        """``_module_step`` for a module replayed in ``n`` slices of the batch: the
        gradient of its loss with respect to its output is taken at the first pass's
        output ``h`` (the next module's input, the replay's own values), then each slice's
        replay sends its part of it back, one slice's activations at a time, and the
        slices' gradients are summed with the loss's own (its factor terms'). Only for a
        module whose examples do not meet (``holds.per_example``, no random draws): the
        same gradient as one replay, to float rounding."""
        module = model.local_modules[i]
        own, variables = module.trainable_variables, self._variables(model, i)
        with tf.GradientTape() as tape:
            tape.watch(h)
            loss, terms = self.module_loss(model, i, h, error, y, signals)
            loss = loss / replicas
        dh, *grads = tape.gradient(loss, [h, *variables])
        # the batch as a number where the trace knows it (the slices' bounds then too)
        batch, deps = x.shape[0] or tf.shape(x)[0], [dh]
        for k in range(n if dh is not None else 0):  # (no dh: its loss has no CE term)
            start, stop = batch * k // n, batch * (k + 1) // n
            with tf.control_dependencies(deps), fast.reading(moments, (start, stop)):
                got = holds.slice_gradients(module, own, x, dh, start, stop)  # one at a time
            deps = [g for g in got if g is not None]
            grads[:len(own)] = [g if a is None else a if g is None else a + g
                                for a, g in zip(grads, got)]
        return _result(grads, variables, terms)

    def _one_module_at_a_time(self, model, x, y):
        """The local route: module i's gradient right after its forward, so that only
        one module's activations are held at once."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        results, h = [], x
        deps = []
        for i, m in enumerate(model.local_modules):
            with tf.control_dependencies(deps):  # keep the graph in module order
                with tf.GradientTape() as tape:
                    h = m(ops.stop_gradient(h), training=True)
                    results.append(self._module_step(model, i, tape, h, None, y, None, replicas))
            deps = [g for g, _ in results[-1][0] if g is not None]
        return self._collect(results, h)

    def _module_step(self, model, i, tape, h, error, y, signals, replicas):
        loss, terms = self.module_loss(model, i, h, error, y, signals)
        # each replica holds a copy of the terms; the optimizer sums replicas'
        # gradients, so divide to get the global mean
        variables = self._variables(model, i)
        return _result(tape.gradient(loss / replicas, variables), variables, terms)

    def _variables(self, model, i):
        """What module i's loss trains: its own variables and its route's for it."""
        return model.local_modules[i].trainable_variables + self.route.extra_variables(model, i)

    @staticmethod
    def _collect(results, logits):
        grads_and_vars = [gv for r in results for gv in r[0]]
        # the first term over the hidden modules only (their signal's, logged as
        # feedback_dot_output or readout_ce): the head's is the network's CE, logged as
        # `loss` (adding it in here made the two logs overlap)
        sums = [sum((r[1][0] for r in results[:-1]), 0.0),
                *(sum(r[1][k] for r in results) for k in (1, 2))]
        return grads_and_vars, logits, sums, tf.stack([r[2] for r in results])

    def module_loss(self, model, i, h, error, y, signals=None):
        """L_i = alpha CE_i (+ beta L_align,i + gamma L_ortho,i) for module i's output h.

        The last module (the classifier head) learns from the true CE."""
        if i == len(model.local_modules) - 1:
            ce = losses.cross_entropy(h, y)
        else:
            ce = self.route.ce_term(model, i, h, error, y, signals)
        align, ortho = self.factor_terms(svd_layers(model.local_modules[i]))
        return self.weighted(ce, align, ortho), (ce, align, ortho)


def _result(grads, variables, terms):
    """A module step's (gradients and variables, terms, nonfinite flags)."""
    bad = tf.stack([*(nonfinite(t) for t in terms), nonfinite(*grads)])
    return list(zip(grads, variables)), terms, bad


def nonfinite(*tensors):
    """1.0 when any element of ``tensors`` is NaN or Inf, else 0.0."""
    flags = [tf.reduce_any(tf.logical_not(tf.math.is_finite(tf.cast(t, tf.float32))))
             for t in tensors if t is not None]
    if not flags:
        return tf.constant(0.0)
    return tf.cast(tf.reduce_any(tf.stack(flags)), tf.float32)


__all__ = ["EndToEnd", "LearningRule", "Local", "TERMS", "nonfinite"]
