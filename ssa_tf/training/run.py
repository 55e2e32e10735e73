"""One training run, end to end: data, model, fit, evaluation, workdir outputs.

The workdir receives the final model (``model.keras``), TensorBoard logs,
``metrics.csv`` (one row per epoch), ``config.json`` and ``summary.json``.
Files are written under a temporary name and renamed, so a failure never
leaves a half-written output behind. The data is read before anything is
written, so a run whose data cannot be read leaves nothing either.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from ssa_tf import data as data_lib
from ssa_tf import atomic_files
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.training import callbacks as callbacks_lib
from ssa_tf.training import checkpoints, loop
from ssa_tf.training.workdir import WorkdirClaim
from ssa_tf.training.model import compile_model, model_from_config
from ssa_tf.training import rank as rank_lib
from ssa_tf.training.rank import RankPruning, cut_epochs
from ssa_tf.training.schedules import WarmupAfterCuts
from ssa_tf.errors import InputError  # noqa: F401  (raised here; its home)


def learning_rate_schedule(cfg: RunConfig, steps_per_epoch: int):
    """The rate: constant, decayed at ``train.lr_decay_epochs``, and warmed up again
    after each rank cut when ``rank.warmup_steps`` > 0."""
    t, r = cfg.train, cfg.rank
    rate = cfg.learning_rate()
    if t.lr_decay_epochs:
        boundaries = [int(e) * steps_per_epoch for e in t.lr_decay_epochs]
        values = [rate * t.lr_decay_factor ** k for k in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    if r.warmup_steps and r.tau is not None and cfg.rule_spec.svd:
        cuts = [e * steps_per_epoch for e in cut_epochs(t.epochs, r.start, r.interval)]
        rate = WarmupAfterCuts(rate, cuts, r.warmup_steps)
    return rate


def load_data(cfg: RunConfig) -> data_lib.DatasetSpec:
    d = cfg.data
    return data_lib.load(d.dataset, cfg.train.batch_size, data_dir=d.data_dir, seed=cfg.seed,
                         augment=d.augment, max_train_examples=d.max_train_examples,
                         validation_split=d.validation_split, label=d.label,
                         manual_dir=d.manual_dir, image_size=d.image_size,
                         synthetic_shape=d.synthetic_shape, synthetic_classes=d.synthetic_classes,
                         autotune=d.autotune)


def train(cfg: RunConfig, verbose=1, extra_callbacks=(), claim=None) -> dict:
    """Train per ``cfg``; write the workdir; return the summary dict.

    With a workdir the run is checkpointed after every epoch (and every
    ``runtime.checkpoint_steps`` steps) and resumes from its last checkpoint
    when started again with the same settings; the workdir is locked meanwhile.
    ``claim`` (``ssa_tf.preflight.check``'s) has claimed the workdir already;
    without one the run claims it here, the same way.
    """
    rt = cfg.runtime
    # first: MultiWorkerMirroredStrategy must exist before any other TensorFlow op
    placement = loop.setup(rt.strategy, rt.logical_cpus, rt.workdir, cfg.train.batch_size,
                           checkpoint_steps=rt.checkpoint_steps,
                           keep_checkpoints=rt.keep_checkpoints)
    workdir = placement.workdir  # the chief's is runtime.workdir; other workers' temporary
    own = claim is None
    if own:
        claim = WorkdirClaim.unchecked(cfg)
    try:
        state = claim.take(workdir, chief=placement.chief)
        return _train_claimed(cfg, placement, workdir, state, verbose, extra_callbacks)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        if "record" not in str(e).lower() and "corrupt" not in str(e).lower():
            raise
        first = plain_error(e)
        raise InputError(f"the data of {cfg.data.dataset} in {cfg.data.data_dir} cannot be read "
                         f"({first}); prepare it again with `tfds build {cfg.data.dataset}`") \
            from None
    finally:
        if own:
            claim.release()


def plain_error(e) -> str:
    """A TensorFlow error's own words on one line, without the graph's internals
    ({{function_node ...}}, [[{{node ...}}]], [Op:...])."""
    import re

    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\[\[\{\{.*?\}\}\]\]|\{\{.*?\}\}|\[Op:[^\]]*\]", "", text)
    text = " ".join(text.split())
    return text[:300]


def _train_claimed(cfg, placement, workdir, state, verbose, extra_callbacks):
    # TensorFlow combines each op seed with the global one: set it before the
    # input pipeline is built, or a run's data order depends on what ran
    # earlier in the process (an experiment grid's first run differed from the rest)
    keras.utils.set_random_seed(cfg.seed)
    ds = load_data(cfg)
    next(iter(ds.train))  # a corrupt file fails here, before anything is written
    os.makedirs(workdir, exist_ok=True)
    if state != "resume":
        atomic_files.write_text(os.path.join(workdir, "config.json"),
                         json.dumps(cfg.record(), indent=2, default=list))
    with placement.strategy.scope():  # model, optimizer, metrics, rank callback
        model = model_from_config(cfg, ds.input_shape, ds.num_classes)
        steps = -(-ds.train_examples // cfg.train.batch_size)
        compile_model(model, learning_rate_schedule(cfg, steps), cfg.train.jit_compile,
                      steps_per_epoch=steps)
    if verbose and model.network_config is not None:  # a user's model: how it was cut
        placement.log(module_split(cfg, model))
    trainable_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    timer = callbacks_lib.EpochTimer()
    callbacks = _callbacks(cfg, model, ds, placement, workdir, state, timer, extra_callbacks)
    try:
        # the validation split is carved from train; without one (validation_split 0)
        # nothing is validated: the test split is evaluated once, below
        history = placement.fit(model, ds.train, ds.validation, cfg.train.epochs, callbacks,
                                verbose, timer)
    except callbacks_lib.Diverged as e:
        raise callbacks_lib.Diverged(f"{e}; {_checkpoints_note(placement)}") from None
    final = placement.evaluate(model, ds.test)
    rank_lib.compact(model)  # cuts in place leave zeroed components: the saved model drops them
    tmp = os.path.join(workdir, "model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, os.path.join(workdir, "model.keras"))
    summary = {
        "rule": cfg.rule.name, "card": cfg.card().as_dict(), "model": cfg.model.model,
        # what model.keras (and its exports) take: raw pixels, normalized inside
        "input": model.input_description(),
        "dataset": cfg.data.dataset, "epochs": cfg.train.epochs,
        "batch_size": cfg.train.batch_size, "learning_rate": cfg.learning_rate(),
        "test_accuracy": float(final["accuracy"]), "test_loss": float(final["loss"]),
        "test_split": ds.test_split, "train_split": ds.train_split,
        # history's val_* metrics come from this split (None: not validated)
        "validation_split": ds.validation_split,
        "trainable_params": trainable_params,
        "final_trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "ranks": model.ranks(),
        "epoch_seconds": [round(s, 3) for s in timer.seconds],
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "strategy": cfg.runtime.strategy, "replicas": placement.replicas,
        "resumed_from_epoch": placement.resumed_from,
        "resumed_from_step": placement.resumed_at[1],
    }
    atomic_files.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
    placement.close()
    return summary


def module_split(cfg, model) -> str:
    """The local modules of a user's model, one line each, as printed when a run starts."""
    from ssa_tf.nn.user import split_lines

    how = ("where MODULE_ENDS ends them" if model.module_ends is not None
           else "cut automatically; MODULE_ENDS in the file chooses the ends")
    whole = (f"; {cfg.rule.name} trains them end to end as one network"
             if model.rule.end_to_end else "")
    return "\n".join([f"{cfg.model.model}: {len(model.local_modules)} local modules ({how}"
                      f"{whole}):", *(f"  {line}" for line in split_lines(model.local_modules))])


def _callbacks(cfg, model, ds, placement, workdir, state, timer, extra):
    r = cfg.rank
    callbacks = [timer,
                 callbacks_lib.divergence_guard(model, cfg.runtime.skip_nonfinite_steps,
                                                log=placement.log),
                 keras.callbacks.CSVLogger(os.path.join(workdir, "metrics.csv"),
                                           append=state == "resume"),
                 keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"),
                                             write_graph=False),
                 *extra]
    if cfg.runtime.diagnostics_every and cfg.rule_spec.local:
        from ssa_tf.training.diagnostics import AlignmentMonitor
        # a fixed batch of the validation split (else train), so that the angles compare
        x, y = next(iter(ds.validation if ds.validation is not None else ds.train))
        callbacks.append(AlignmentMonitor(np.asarray(x), np.asarray(y),
                                          cfg.runtime.diagnostics_every,
                                          workdir=workdir if placement.chief else None))
    if r.tau is not None and cfg.rule_spec.svd:
        unknown = sorted(set(r.exempt) - set(model.ranks()))
        if unknown:
            raise UsageError(f"rank.exempt names unknown SVD layers {unknown}; the model has: "
                             f"{', '.join(model.ranks())}")
        callbacks.insert(1, RankPruning(r.tau, r.start, r.interval, r.min, r.exempt,
                                        workdir=workdir, verbose=int(placement.chief),
                                        feedback=r.feedback_cut, final_cut=r.final_cut,
                                        keep_ends=r.keep_ends, energy=r.energy,
                                        data=ds.train, energy_batches=r.energy_batches,
                                        dense_tau=r.dense_tau, cut_form=r.cut_form))
    return callbacks


def _checkpoints_note(placement):
    """Where the last good checkpoint is, for the divergence message."""
    found = checkpoints.list_checkpoints(placement.backup_dir) if placement.backup_dir else []
    if not found:
        return "no checkpoint was written before it"
    epoch, step = found[-1]
    where = f"epoch {epoch}" + (f", step {step} of the next" if step else "")
    return f"the last good checkpoint ({where}) is kept in {placement.backup_dir}"
