"""Rank reduction during training (docs/ALGORITHM.md §5): the ``RankPruning`` callback.

Every ``interval`` epochs from epoch ``start`` each SVD layer is re-factored
exactly and cut to the smallest rank keeping a fraction ``tau`` of its energy.
The cut is real: variables get new, smaller shapes, the optimizer is rebuilt
for them and the compiled train/test/predict functions are retraced, so the
steps after a cut are cheaper, not just the exported model smaller.

``rank.cut_form=in_place`` keeps every shape instead: the dropped components are zeroed
(``SVDLayer.truncate``), nothing is rebuilt or retraced and the steps cost the full rank's;
the run's end drops the zeros (``compact``) before it saves the model.

Optimizer state after a cut [choice]: the step counter and the moments of
every variable that was not re-factored are carried over unchanged. A
re-factored layer's U, s and V are new coordinates (rotated by the exact
SVD), so their old element-wise moments mean nothing there: the first moment
restarts at zero and the second moment at the old variable's mean second
moment. Resetting both to zero would make Adam's first steps after the cut
about 3x lr (its bias correction assumes t steps of history), a jolt measured
in ``tests/test_rank.py``. A cut in place restarts the same moments in place, the second
at the mean over the live slots the resized variable would have held.
"""

from __future__ import annotations

import csv
import os

import numpy as np
import keras
import tensorflow as tf

from ssa_tf.config import presets
from ssa_tf.methods import registry
from ssa_tf.config.schema import cut_epochs, is_cut_epoch  # noqa: F401  (the one schedule)
from ssa_tf.nn import SVDDense, energy_rank
from ssa_tf.allowed_values import RANK_CUT_FORMS as CUT_FORMS
from ssa_tf.nn.svd import CUT_ENERGIES, resolve_feedback_cut, serial_blas
from ssa_tf.training import rank_plot
from ssa_tf.training.csvlog import keep_rows
from ssa_tf.training.model import retrace
from ssa_tf.training.schedules import WarmupAfterCuts  # noqa: F401  (registered; its home)


def _preset_schedule(name) -> dict | None:
    """The cut schedule (tau, start, interval) a preset sets for SSA (config/presets), or
    None when it sets none."""
    values = presets.load(name).values(registry.DEFAULT)
    if "rank.tau" not in values:
        return None
    return {k: values[f"rank.{k}"] for k in ("tau", "start", "interval")}


# supplementary §2 / docs/ALGORITHM.md §6: read from the presets that set them
PRESETS = {name: s for name in presets.NAMES if (s := _preset_schedule(name)) is not None}

CSV_FIELDS = ["epoch", "layer", "old_rank", "new_rank", "energy", "params_before", "params_after"]


def _trainable_count(model):
    """The trainable parameters, less the components a cut in place zeroed."""
    dead = sum((l.rank - l.live_rank) * (sum(l._matrix_shape) + 1) for l in model.svd_layers())
    return int(sum(np.prod(v.shape) for v in model.trainable_variables)) - dead


def end_layers(model):
    """Names of the first SVD layer (it reads the input) and the last (the classifier)."""
    layers = model.svd_layers()
    return tuple(dict.fromkeys((layers[0].name, layers[-1].name))) if layers else ()


@serial_blas
def input_covariances(model, batches, names=None) -> dict:
    """Second moment E[x x^T] of the rows each SVD layer's matrix multiplies
    (``matrix_inputs``), over the inputs of ``batches`` (arrays, or (x, y, ...)
    tuples) run through ``model`` in inference mode. ``names``: only these layers.

    Each layer sees what the trained network feeds it, so the statistics
    stay local to the layer: no error or weight of another layer enters them.
    """
    layers = [l for l in model.svd_layers() if names is None or l.name in names]
    sums, counts = {}, {}

    def hook(layer, x):
        rows = layer.matrix_inputs(x)
        sums[layer.name] = sums.get(layer.name, 0.0) + rows.T @ rows
        counts[layer.name] = counts.get(layer.name, 0) + rows.shape[0]

    for layer in layers:
        layer._input_hook = hook
    try:
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x, training=False)
            seen += 1
    finally:
        for layer in layers:
            layer._input_hook = None
    if not seen:
        raise ValueError("input_covariances needs at least one batch")
    return {name: sums[name] / counts[name] for name in sums}


def cut_model(model, tau, min_rank=1, exempt=(), feedback=None, covariances=None,
              dense_tau=None, in_place=False):
    """Cut every non-exempt SVD layer of ``model`` to its energy rank: the rank keeping
    ``tau`` of its energy, or ``dense_tau`` of it for the dense layers when given.

    With ``covariances`` (``input_covariances``, one per layer) the energy is
    the layer's output energy on those inputs and the cut keeps those outputs
    best (``SVDLayer.truncate``); without, it is the weight's (the paper's).
    Returns (records, pairs): one record per layer (old/new rank, retained
    energy) and the (new variable, old variable) pairs of re-factored layers, or with
    ``in_place`` (``truncate_layers``) the (layer, live slots before) of the cut ones.
    """
    feedback = resolve_feedback_cut(feedback, covariances or None)
    targets = {}
    for layer in model.svd_layers():
        if layer.name not in exempt:
            if covariances is None and feedback == "slots":
                spectrum = layer.slot_spectrum()  # the energy the slot cut really keeps
            elif covariances is None:
                spectrum = layer.spectrum()
            else:
                spectrum = layer.output_spectrum(covariances[layer.name])
            dense = dense_tau is not None and isinstance(layer, SVDDense)
            r = energy_rank(spectrum, dense_tau if dense else tau)
            targets[layer.name] = min(layer.live_rank, max(r, min_rank))
    return truncate_layers(model, targets, feedback, covariances, in_place)


def truncate_layers(model, targets, feedback=None, covariances=None, in_place=False):
    """Cut the SVD layers named in ``targets`` to their target (live) rank (no rank grows),
    in place or not (``SVDLayer.truncate``).

    Returns (records, pairs) as ``cut_model`` does."""
    feedback = resolve_feedback_cut(feedback, covariances or None)
    covariances = covariances or {}
    records, pairs = [], []
    layers = {l.name: l for l in model.svd_layers()}
    for name, r in targets.items():
        layer = layers[name]
        live = layer.live_slots()
        if r > len(live):
            raise ValueError(f"{name} is at rank {len(live)}; it cannot grow to {r}")
        if r < len(live):
            old = (layer.U, layer.s, layer.V)
            records.append(layer.truncate(int(r), feedback, covariances.get(name), in_place))
            pairs.extend([(layer, live)] if in_place else zip((layer.U, layer.s, layer.V), old))
        else:
            records.append({"layer": name, "old_rank": len(live), "new_rank": len(live),
                            "energy": 1.0})
    return records, pairs


def rebuild_optimizer(model, pairs, slots=None):
    """A fresh optimizer of the same kind and step for the model's current variables.

    ``pairs`` maps re-factored variables to the ones they replace; see the
    module docstring for how their moments restart. ``slots`` ({id(new variable): the
    old variable's slots it keeps}, ``compact``): those carry their moments at the slots.
    """
    old = model.optimizer
    config = old.get_config()
    if isinstance(old._learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        config["learning_rate"] = old._learning_rate  # keep the very same schedule
    new = old.__class__.from_config(config)
    variables = model.trainable_variables
    new.build(variables)
    new.iterations.assign(old.iterations)
    if not (hasattr(old, "_momentums") and hasattr(old, "_velocities")):
        return new  # not Adam-like: its state simply restarts
    replaced, slots = {id(n): o for n, o in pairs}, slots or {}
    for v in variables:
        j = new._get_variable_index(v)
        if id(v) in slots:
            i = old._get_variable_index(replaced[id(v)])
            for moments in ("_momentums", "_velocities"):
                value = getattr(old, moments)[i].numpy()[..., slots[id(v)]]
                getattr(new, moments)[j].assign(value)
        elif id(v) in replaced:
            second = old._velocities[old._get_variable_index(replaced[id(v)])]
            new._velocities[j].assign(tf.fill(v.shape, tf.reduce_mean(second)))
        else:
            i = old._get_variable_index(v)
            new._momentums[j].assign(old._momentums[i])
            new._velocities[j].assign(old._velocities[i])
    return new


def apply_cut(model, tau, min_rank=1, exempt=(), feedback=None, covariances=None,
              dense_tau=None, in_place=False):
    """Cut, rebuild the optimizer and retrace (in place: restart the cut layers' moments
    in place), in the model's strategy scope."""
    return _applied(model, lambda: cut_model(model, tau, min_rank, exempt, feedback,
                                             covariances, dense_tau, in_place), in_place)


def apply_ranks(model, ranks, feedback=None, in_place=False):
    """Cut the model to the given ranks (a checkpoint's), as ``apply_cut`` would."""
    return _applied(model, lambda: truncate_layers(model, dict(ranks or {}), feedback,
                                                   in_place=in_place), in_place)


def _applied(model, cut, in_place=False):
    with model.distribute_strategy.scope():
        records, pairs = cut()
        if pairs and in_place:
            restart_moments(model.optimizer, pairs)
            model.feedback_changed()
        elif pairs:
            model.optimizer = rebuild_optimizer(model, pairs)
            model.feedback_changed()
            retrace(model)
    return records


def restart_moments(optimizer, cut):
    """After a cut in place, ``cut``'s (layer, live slots before) layers' U, s and V restart
    their moments as ``rebuild_optimizer`` restarts a recreated variable's: the first at
    zero, the second at its mean over the slots that were live (a resized variable's).
    An optimizer not built yet (no step taken) has no moments to restart."""
    if not optimizer.built:
        return
    if not (hasattr(optimizer, "_momentums") and hasattr(optimizer, "_velocities")):
        raise ValueError(f"a cut in place restarts Adam's moments; {type(optimizer).__name__} "
                         "has none (use rank.cut_form=resize)")
    for layer, live in cut:
        for var in (layer.U, layer.s, layer.V):
            i = optimizer._get_variable_index(var)
            mean = tf.reduce_mean(tf.gather(optimizer._velocities[i], live, axis=-1))
            optimizer._momentums[i].assign(tf.zeros(var.shape, var.dtype))
            optimizer._velocities[i].assign(tf.fill(var.shape, mean))


def compact(model) -> bool:
    """Drop the components cuts in place zeroed (``SVDLayer.compact``): the model computes
    the same at its live ranks; the optimizer keeps every moment. False: nothing to drop."""
    with model.distribute_strategy.scope():
        pairs, slots = [], {}
        for layer in model.svd_layers():
            live, old = layer.live_slots(), (layer.U, layer.s, layer.V)
            if layer.compact():
                pairs.extend(zip(layer.factor_variables()[:3], old))
                slots.update({id(v): live for v in layer.factor_variables()[:3]})
        if not pairs:
            return False
        model.optimizer = rebuild_optimizer(model, pairs, slots)
        retrace(model)
    return True


class RankPruning(keras.callbacks.Callback):
    """Shrinks every SVD layer to the energy threshold ``tau`` during training.

    Cuts at the end of epoch e (counting from 1) when e >= start, e >= 1 and
    (e - start) is a multiple of ``interval``: ``start=0, interval=10`` cuts
    after epochs 10, 20, ...; ``start=20`` after 20, 30, ... Layers named in
    ``exempt`` keep their rank, and with ``keep_ends`` so do the first SVD
    layer and the classifier (``end_layers``; ``rank.keep_ends``, on by default
    in a run, off here: the paper cuts every layer); none drops below
    ``min_rank``. No cut follows
    the last epoch unless ``final_cut``: with no training after it, it costs
    accuracy (1 to 4 points in a withdrawn grid of the former rule) and buys only a
    smaller export, which the exporter's own energy cut gives as well.

    ``energy="outputs"`` measures each layer's energy on its outputs instead of
    its weight: ``energy_batches`` batches of ``data`` (the training set) run
    through the model at each cut, and each layer keeps the rank-r weight
    that best keeps its outputs on them (``input_covariances``, ``cut_model``).
    ``dense_tau`` is the dense layers' own fraction (``rank.dense_tau``; None: ``tau``).
    ``cut_form="in_place"`` zeroes the dropped components instead of resizing (``apply_cut``).

    Writes ``ranks.csv`` (one row per layer and cut) and TensorBoard scalars
    ``rank/<layer>`` into ``workdir``, and at the end of training a PNG of
    rank per layer over epochs.
    """

    def __init__(self, tau=0.95, start=0, interval=10, min_rank=1, exempt=(), workdir=None,
                 verbose=1, feedback=None, final_cut=False, keep_ends=False,
                 energy="weights", data=None, energy_batches=8, dense_tau=None,
                 cut_form="resize"):
        super().__init__()
        if cut_form not in CUT_FORMS:
            raise ValueError(f"cut_form must be one of {CUT_FORMS}, got {cut_form!r}")
        self.in_place = cut_form == "in_place"
        if energy not in CUT_ENERGIES:
            raise ValueError(f"energy must be one of {CUT_ENERGIES}, got {energy!r}")
        if energy == "outputs" and (data is None or energy_batches < 1):
            raise ValueError("energy='outputs' needs data and energy_batches >= 1")
        self.energy, self.data, self.energy_batches = energy, data, int(energy_batches)
        if not 0 < tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        if dense_tau is not None and not 0 < dense_tau <= 1:
            raise ValueError(f"dense_tau must be in (0, 1], got {dense_tau}")
        self.dense_tau = None if dense_tau is None else float(dense_tau)
        if interval < 1 or start < 0 or min_rank < 1:
            raise ValueError("interval and min_rank must be >= 1 and start >= 0")
        self.tau, self.start, self.interval = float(tau), int(start), int(interval)
        self.min_rank, self.exempt = int(min_rank), tuple(exempt)
        self.keep_ends = bool(keep_ends)
        self.workdir, self.verbose = workdir, verbose
        self.feedback = feedback  # how feedback factors are cut (SVDLayer.truncate)
        self.final_cut = bool(final_cut)
        self.history = []  # (epoch, {layer: rank}) after every epoch
        self.cuts = []
        self._report = []  # the last cut's lines, printed after that epoch's own line

    def due(self, epoch):
        return is_cut_epoch(epoch + 1, self.start, self.interval)

    def on_train_begin(self, logs=None):
        if not self.history:
            self.history.append((0, self.model.live_ranks()))

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 >= self.params.get("epochs", float("inf"))
        if self.due(epoch) and (self.final_cut or not last):
            before = _trainable_count(self.model)
            exempt = self.exempt + (end_layers(self.model) if self.keep_ends else ())
            covariances = None
            if self.energy == "outputs":
                names = [l.name for l in self.model.svd_layers() if l.name not in exempt]
                covariances = input_covariances(
                    self.model, self.data.take(self.energy_batches), names)
            records = apply_cut(self.model, self.tau, self.min_rank, exempt, self.feedback,
                                covariances, self.dense_tau, self.in_place)
            after = _trainable_count(self.model)
            for r in records:
                r.update(epoch=epoch + 1, params_before=before, params_after=after)
            self.cuts.append(records)
            self._log(records, epoch + 1, before, after)
        self.history.append((epoch + 1, self.model.live_ranks()))

    def on_epoch_begin(self, epoch, logs=None):
        self._print_report()

    def _print_report(self):
        """The last cut's report, once Keras has printed that epoch's own line (its progress
        logger runs after this callback at an epoch's end, before it at the next start)."""
        for line in self._report:
            print(line)
        self._report = []

    def resume_at(self, epoch, step):
        """After a restore: drop ranks.csv rows of cuts after ``epoch``."""
        if self.workdir:
            keep_rows(os.path.join(self.workdir, "ranks.csv"),
                      lambda row: int(row["epoch"]) <= epoch)

    def on_train_end(self, logs=None):
        self._print_report()
        if self.workdir and len(self.history) > 1:
            rank_plot.plot_ranks(self.history, os.path.join(self.workdir, "ranks.png"))

    def _log(self, records, epoch, before, after):
        if self.verbose:
            changed = [r for r in records if r["new_rank"] < r["old_rank"]]
            self._report = [
                f"rank cut after epoch {epoch} (tau={self.tau}"
                + ("" if self.dense_tau is None else f", dense layers {self.dense_tau},")
                + f" of the {self.energy}' "
                f"energy): {len(changed)} of {len(records)} layers cut, trainable parameters "
                f"{before} -> {after}",
                *(f"  {r['layer']}: {r['old_rank']} -> {r['new_rank']} (energy kept "
                  f"{r['energy']:.4f})" for r in changed)]
        if not self.workdir:
            return
        os.makedirs(self.workdir, exist_ok=True)
        path = os.path.join(self.workdir, "ranks.csv")
        new_file = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            if new_file:
                writer.writeheader()
            for r in records:
                writer.writerow({k: r[k] for k in CSV_FIELDS})
        writer = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard", "ranks"))
        with writer.as_default():
            for r in records:
                tf.summary.scalar(f"rank/{r['layer']}", r["new_rank"], step=epoch)
                tf.summary.scalar(f"energy/{r['layer']}", r["energy"], step=epoch)
            tf.summary.scalar("trainable_params", after, step=epoch)
        writer.close()
