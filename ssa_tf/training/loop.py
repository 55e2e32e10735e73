"""The one training loop, and where a run trains (its Distribution: strategy, chief, outputs).

    placement = loop.setup("mirrored", logical_cpus=2, workdir="runs/x", batch_size=64)
    with placement.strategy.scope():
        model = ...; compile_model(model); callbacks = [...]
    placement.fit(model, train, validation, epochs, callbacks)
    placement.evaluate(model, test)
    placement.close()

A run with a workdir trains in ``fit_loop``: ``model.fit``'s work (the same
``train_step`` and ``test_step`` under ``strategy.run``, the same callbacks)
with checkpoints after every epoch (``ssa_tf.training.checkpoints``). It is
also the loop of ``multi_worker`` (MultiWorkerMirroredStrategy, one process per
worker, the cluster in ``TF_CONFIG``), under which Keras 3's ``fit`` and
``evaluate`` fail: they convert a ``PerReplica`` batch to a tensor while
building the model (keras-team/keras#20585). Library calls without a workdir
get plain ``model.fit``.

Fault tolerance: after every epoch each worker writes its own backup to
``<workdir>/backup/<task>``; a restarted run (or worker group) agrees on the
last epoch every worker finished and resumes there. The resumed run is the
uninterrupted one: the input pipelines reshuffle on each pass, so the restore
also skips as many passes as epochs were done.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import keras
import tensorflow as tf

from ssa_tf.config import UsageError
from ssa_tf.training.checkpoints import BACKUP_KEEP, EpochBackup, list_checkpoints
from ssa_tf.training.strategies import (describe, fingerprint, guard_jit_compile, is_chief,
                                        is_multi_worker, make_strategy, notice_slow_bfloat16,
                                        shard_by_data, task_name)

# Keras 3.15's fit starts a pass over the training data at the end of every
# epoch and then starts another for the next epoch (its EpochIterator, when
# the dataset's length is known), and each pass reshuffles: epoch e sees the
# order of pass 1 + 2e (pass 0 built the model). The loop does the same, so
# that a run with checkpoints sees the data of model.fit with that seed.
PASSES_PER_EPOCH = 2


# --------------------------------------------------------------------------
# A run's distribution: strategy, chief, output folder, fit/evaluate dispatch.
# --------------------------------------------------------------------------

class Distribution:
    """Where and how a run trains; built by ``setup``."""

    def __init__(self, strategy, workdir, batch_size=None, log=print, checkpoint_steps=0,
                 keep_checkpoints=BACKUP_KEEP):
        self.strategy = strategy
        self.multi_worker = is_multi_worker(strategy)
        self.chief = is_chief(strategy)
        self.replicas = strategy.num_replicas_in_sync
        self.log = log if self.chief else (lambda *a, **k: None)
        # the chief writes the outputs; the others write the same files (saving can
        # take part in collectives) into a folder that close() removes
        self._temp = None
        if self.chief or workdir is None:
            self.workdir = workdir
        else:
            self._temp = tempfile.mkdtemp(prefix=f"ssa_tf_{task_name(strategy)}_")
            self.workdir = self._temp
            atexit.register(shutil.rmtree, self._temp, ignore_errors=True)
        self.backup_dir = None
        if workdir is not None:
            self.backup_dir = os.path.join(workdir, "backup", task_name(strategy))
        self.checkpoint_steps = int(checkpoint_steps)
        self.keep_checkpoints = int(keep_checkpoints)
        self.resumed_from = 0
        self.resumed_at = (0, 0)  # (epochs done, steps into the next) of the checkpoint used
        if batch_size is not None and batch_size % self.replicas:
            raise UsageError(f"--batch_size={batch_size} is the global batch; it must be a "
                             f"multiple of the {self.replicas} replicas")

    def fit(self, model, train, validation_data=None, epochs=1, callbacks=(), verbose=1,
            timer=None):
        """The training loop with checkpoints (``fit_loop``) when the run has a
        workdir, else ``model.fit``; returns the History."""
        guard_jit_compile(model, self.strategy, self.log)
        notice_slow_bfloat16(model, self.strategy, self.log)
        verbose = verbose if self.chief else 0
        if self.backup_dir is None:
            if self.multi_worker:
                raise UsageError("--strategy=multi_worker needs a workdir (for its backups)")
            return model.fit(train, validation_data=validation_data, epochs=epochs,
                             callbacks=list(callbacks), verbose=verbose)
        backup = EpochBackup(self.backup_dir, timer=timer, steps=self.checkpoint_steps,
                             keep=self.keep_checkpoints)
        history = fit_loop(model, train, validation_data, epochs, list(callbacks), verbose,
                           backup=backup, log=self.log)
        self.resumed_from = backup.resumed_from
        self.resumed_at = backup.resumed_at
        if self.multi_worker:
            # every worker says where it ended: equal fingerprints, workers in sync
            print(f"{task_name(self.strategy)}: weights fingerprint {fingerprint(model)}",
                  flush=True)
        return history

    def evaluate(self, model, dataset):
        if not self.multi_worker:
            return model.evaluate(dataset, verbose=0, return_dict=True)
        return evaluate_loop(model, dataset)

    def close(self):
        """Once the run is done: remove a non-chief's temporary outputs and every backup
        but the last epoch's, which a longer run of the same settings continues from
        (``--epochs=M`` on a finished workdir; ``workdir.extension_problem``)."""
        if self._temp:
            shutil.rmtree(self._temp, ignore_errors=True)
        if self.backup_dir and os.path.isdir(self.backup_dir):
            ends = [c for c in list_checkpoints(self.backup_dir) if c[1] == 0]
            keep = f"epoch-{ends[-1][0]}" if ends else None
            for name in os.listdir(self.backup_dir):
                if name != keep:
                    path = os.path.join(self.backup_dir, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.remove(path)
            if keep is None:
                os.rmdir(self.backup_dir)
                parent = os.path.dirname(self.backup_dir)
                if os.path.isdir(parent) and not os.listdir(parent):
                    os.rmdir(parent)


def setup(strategy="auto", logical_cpus=None, workdir=None, batch_size=None, log=print,
          checkpoint_steps=0, keep_checkpoints=BACKUP_KEEP):
    """The run's ``Distribution``; call it before any other TensorFlow work
    (MultiWorkerMirroredStrategy must exist before the first op)."""
    placement = Distribution(make_strategy(strategy, logical_cpus), workdir, batch_size, log,
                          checkpoint_steps, keep_checkpoints)
    if strategy != "auto" or placement.replicas > 1:
        placement.log(describe(placement.strategy))
    return placement


# --------------------------------------------------------------------------
# The loop: model.fit's work, without its symbolic build.
# --------------------------------------------------------------------------

def build_for(model, dataset):
    """Build the compiled loss, metrics and optimizer from one (undistributed) batch.

    Keras's fit does this under a strategy, from its own first pass over the
    data; doing the same here keeps the data order the same as fit's.
    """
    batch = next(iter(dataset))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=batch)


class _StepFunctions:
    """``strategy.run(model.train_step)`` and ``test_step`` as tf.functions.

    Traced again when the model's variables change (a rank cut replaces them:
    a traced function would keep training the old ones). With ``model.jit_compile``
    (``train.jit_compile``) each replica's step is XLA-compiled, as Keras's ``fit``
    compiles it: once per input shape.
    """

    def __init__(self, model, element_spec):
        self.model, self.spec = model, element_spec
        self._key, self._train, self._test = None, None, None

    def _refresh(self):
        model = self.model
        key = (id(model.optimizer), tuple(id(v) for v in model.variables))
        if key == self._key:
            return
        strategy = model.distribute_strategy
        train_step, test_step = model.train_step, model.test_step
        if model.jit_compile:
            train_step = tf.function(train_step, jit_compile=True, reduce_retracing=True)
            test_step = tf.function(test_step, jit_compile=True, reduce_retracing=True)

        def train(batch):
            strategy.run(train_step, args=(batch,))

        def test(batch):
            return strategy.run(test_step, args=(batch,))

        self._train = tf.function(train, input_signature=[self.spec])
        self._test = tf.function(test, input_signature=[self.spec])
        self._key = key

    def train(self, batch):
        self._refresh()
        return self._train(batch)

    def test(self, batch):
        self._refresh()
        return self._test(batch)


def _epoch_logs(model, keys=None):
    """The metrics over everything seen since the last reset, summed over all replicas."""
    logs = {}
    for name, value in model.get_metrics_result().items():
        value = np.asarray(value)
        if (keys is None or name in keys) and value.ndim == 0:
            logs[name] = float(value)
    return logs


def _run_eval(model, functions, distributed):
    model.reset_metrics()
    outputs = None
    for batch in distributed:
        outputs = functions.test(batch)
    # test_step decides which metrics it reports (SSAModel drops the *_term ones)
    return _epoch_logs(model, None if outputs is None else set(outputs))


def evaluate_loop(model, dataset):
    strategy = model.distribute_strategy
    dataset = shard_by_data(dataset)
    build_for(model, dataset)
    distributed = strategy.experimental_distribute_dataset(dataset)
    return _run_eval(model, _StepFunctions(model, distributed.element_spec), distributed)


def fit_loop(model, train, validation_data=None, epochs=1, callbacks=(), verbose=1, backup=None,
             log=print):
    """``model.fit(train, validation_data=..., epochs=...)`` for any strategy, in a plain loop.

    With ``backup`` (an ``EpochBackup``) the run resumes from the last epoch
    its backups agree on and writes a new one after every epoch.
    """
    strategy = model.distribute_strategy
    train = shard_by_data(train)
    build_for(model, train)
    dist_train = strategy.experimental_distribute_dataset(train)
    dist_val = None
    if validation_data is not None:
        dist_val = strategy.experimental_distribute_dataset(shard_by_data(validation_data))
    steps = int(train.cardinality())
    # History before the backup, so that a backup holds its own epoch's logs
    history = keras.callbacks.History()
    callbacks = [*callbacks, history, *([backup] if backup is not None else [])]
    cb = keras.callbacks.CallbackList(callbacks, add_progbar=verbose != 0, verbose=verbose,
                                      epochs=epochs, steps=steps if steps > 0 else None,
                                      model=model)

    initial_epoch, initial_step = 0, 0
    if backup is not None:
        initial_epoch, initial_step = backup.restore(model, cb.callbacks, history)
        if initial_step:
            log(f"resuming from the checkpoint at step {initial_step} of epoch "
                f"{initial_epoch + 1} (of {epochs})")
        elif initial_epoch:
            log(f"resuming from the backup of epoch {initial_epoch} (of {epochs})")
        for _ in range(PASSES_PER_EPOCH * initial_epoch):
            iter(dist_train)  # every pass reshuffles: skip those the finished epochs took

    functions = _StepFunctions(model, dist_train.element_spec)
    model.stop_training = False
    cb.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        # a mid-epoch checkpoint restored the metrics of the steps it covers
        skip = initial_step if epoch == initial_epoch else 0
        if not skip:
            model.reset_metrics()
        cb.on_epoch_begin(epoch)
        for step, batch in enumerate(dist_train):
            if step < skip:
                continue  # trained before the checkpoint: same batches, same order
            cb.on_train_batch_begin(step)
            functions.train(batch)
            cb.on_train_batch_end(step, {})
            if model.stop_training:
                break
        for _ in range(PASSES_PER_EPOCH - 1):
            iter(dist_train)  # the pass fit would start and drop
        logs = _epoch_logs(model)
        if dist_val is not None:
            val = _run_eval(model, functions, dist_val)
            logs.update({f"val_{k}": v for k, v in val.items()})
        cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    if isinstance(model.optimizer, keras.optimizers.Optimizer):
        model.optimizer.finalize_variable_values(model.trainable_weights)
    cb.on_train_end(logs)
    return history
