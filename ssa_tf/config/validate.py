"""Every check of a run's configuration that needs no TensorFlow: one line per problem.

``validate(cfg)`` returns the first problem as one line (the CLI prints it and
exits 2), or None. It runs before TensorFlow starts, so a mistake costs a
fraction of a second.
"""

from __future__ import annotations

import json
import os

from ssa_tf.allowed_values import (ACTIVATIONS, CONV_FACTORIZATIONS, DATASETS, ERROR_DTYPES,
                                   HEAD_INITS, LABELS, MODELS, NORMS, PROGRESS, RANK_ENERGIES,
                                   RANK_CUT_FORMS, RANK_FEEDBACK_CUTS, STRATEGIES)
from ssa_tf import model_file
from ssa_tf.config.schema import BUILT_IN_DEFAULTS, RunConfig, cut_epochs, is_model_file
from ssa_tf.methods import registry


def validate(cfg: RunConfig, tf_config: str | None = None) -> str | None:
    """The first problem with ``cfg`` as one line, or None (``tf_config``: $TF_CONFIG)."""
    d, m, t, r, rt = cfg.data, cfg.model, cfg.train, cfg.rank, cfg.runtime
    choices = [("data.dataset", d.dataset, DATASETS), ("data.label", d.label, LABELS),
               ("model.model", m.model, MODELS), ("rule.name", cfg.rule.name, registry.NAMES),
               ("model.norm", m.norm, NORMS), ("model.activation", m.activation, ACTIVATIONS),
               ("model.head_init", m.head_init, HEAD_INITS),
               ("model.conv_factorization", m.conv_factorization, CONV_FACTORIZATIONS),
               ("rank.feedback_cut", r.feedback_cut, RANK_FEEDBACK_CUTS),
               ("rank.energy", r.energy, RANK_ENERGIES),
               ("rank.cut_form", r.cut_form, RANK_CUT_FORMS),
               ("train.error_dtype", t.error_dtype, ERROR_DTYPES),
               ("runtime.progress", rt.progress, PROGRESS)]
    if is_model_file(m.model):  # a user's model file
        problem = validate_model_file(cfg)
        if problem:
            return problem
        choices = [c for c in choices if c[0] != "model.model"]
    # None: the rule's (head_init), the built-in models' default (norm, activation, ...)
    unset_ok = ("rank.feedback_cut", "model.head_init",
                *(f"model.{name}" for name in BUILT_IN_DEFAULTS))
    for name, value, valid in choices:
        if value not in valid and not (name in unset_ok and value is None):
            return f"{flag(name)}={value!r} is not valid; choose from: {', '.join(valid)}"
    if r.feedback_cut == "slots" and r.energy == "outputs":
        return (f"{flag('rank.feedback_cut')}=slots keeps each layer's own components and "
                f"{flag('rank.energy')}=outputs re-factors them; choose first or svd")
    if r.cut_form == "in_place" and cfg.rule.options().get("stiefel_retraction"):
        return ("rank.cut_form=in_place keeps the cut components as zero columns, and "
                "rule.stiefel_retraction makes every column orthonormal after each step, "
                "which would bring them back; use rank.cut_form=resize")
    problem = validate_rule(cfg)
    if problem:
        return problem
    if t.epochs < 1:
        return f"--epochs must be >= 1, got {t.epochs}"
    if t.batch_size < 1:
        return f"--batch_size must be >= 1, got {t.batch_size}"
    if t.learning_rate is not None and not t.learning_rate > 0:
        return f"--learning_rate must be > 0, got {t.learning_rate}"
    if not 0 < t.lr_decay_factor <= 1:
        return f"train.lr_decay_factor must be in (0, 1], got {t.lr_decay_factor}"
    if any(not isinstance(e, int) or e < 1 for e in t.lr_decay_epochs):
        return f"train.lr_decay_epochs must be epochs >= 1, got {t.lr_decay_epochs}"
    if d.max_train_examples is not None and d.max_train_examples < 1:
        return f"data.max_train_examples must be >= 1, got {d.max_train_examples}"
    if d.label == "coarse" and d.dataset != "cifar100":
        return f"data.label=coarse applies to cifar100 only, not {d.dataset}"
    if not 0 <= d.validation_split < 1:
        return f"data.validation_split must be in [0, 1), got {d.validation_split}"
    if d.image_size is not None:
        if d.dataset != "imagenet2012":
            return f"data.image_size applies to imagenet2012 only, not {d.dataset}"
        if d.image_size < 8:
            return f"data.image_size must be >= 8, got {d.image_size}"
    if d.dataset == "synthetic":
        if not d.synthetic_shape or min(d.synthetic_shape) < 1:
            return f"data.synthetic_shape must be positive sizes, got {d.synthetic_shape}"
        if d.synthetic_classes < 2:
            return f"data.synthetic_classes must be >= 2, got {d.synthetic_classes}"
    if r.tau is not None and not 0 < r.tau <= 1:
        return f"rank.tau must be in (0, 1], got {r.tau}"
    if r.dense_tau is not None and not 0 < r.dense_tau <= 1:
        return f"rank.dense_tau must be in (0, 1], got {r.dense_tau}"
    if r.dense_tau is not None and r.tau is None:
        return ("rank.dense_tau sets the dense layers' share of a rank cut; cuts are off "
                "until rank.tau is set")
    minimums = [("rank.warmup_steps", r.warmup_steps, 0, ""),
                ("runtime.checkpoint_steps", rt.checkpoint_steps, 0, " (0: at epoch ends only)"),
                ("runtime.keep_checkpoints", rt.keep_checkpoints, 2, ""),
                ("runtime.diagnostics_every", rt.diagnostics_every, 0, " (0: off)"),
                ("runtime.skip_nonfinite_steps", rt.skip_nonfinite_steps, 0, ""),
                ("seed", cfg.seed, 0, "")]
    if r.tau is not None:
        minimums = [("rank.interval", r.interval, 1, ""), ("rank.start", r.start, 0, ""),
                    ("rank.min", r.min, 1, ""), ("rank.energy_batches", r.energy_batches, 1, ""),
                    *minimums]
    problem = check_minimums(minimums)
    if problem:
        return problem
    problem = validate_distribution(cfg, tf_config)
    if problem:
        return problem
    if r.tau is not None and not rank_cut_epochs(cfg):
        return (f"rank.tau={r.tau} would never cut: the first cut comes after epoch "
                f"{max(r.start, r.interval, 1)} and the run has --epochs={t.epochs} (lower "
                "rank.interval or rank.start, or set rank.final_cut=true)")
    return None


def validate_model_file(cfg: RunConfig) -> str | None:
    """Problems with a user's model file found without running it: the file
    (it compiles, defines build(input_shape, num_classes)), and the model settings that
    shape only the built-in models, refused when given (they used to be ignored silently)."""
    m = cfg.model
    if not os.path.isfile(m.model):
        return f"--model={m.model}: no such file"
    problem = model_file.static_problem(m.model)
    if problem:
        return problem
    for name in BUILT_IN_DEFAULTS:
        value = getattr(m, name)
        if value is not None:
            return (f"model.{name}={value} does not apply to --model={m.model}: a model file's "
                    f"layers are its own (model.{name} shapes the built-in models: "
                    f"{', '.join(MODELS)})")
    return None


def flag(name) -> str:
    """How a user sets field ``name``: a daily flag, or ``--set SECTION.FIELD``."""
    daily = {"data.dataset": "--dataset", "data.data_dir": "--data_dir", "model.model": "--model",
             "rule.name": "--rule", "train.epochs": "--epochs",
             "train.batch_size": "--batch_size", "train.learning_rate": "--learning_rate",
             "runtime.workdir": "--workdir", "runtime.restart": "--restart", "seed": "--seed"}
    return daily.get(name, name)


def rank_cut_epochs(cfg: RunConfig) -> list:
    """The epochs (from 1) after which the rank callback cuts (ssa_tf.training.rank)."""
    r = cfg.rank
    return cut_epochs(cfg.train.epochs, r.start, r.interval, r.final_cut)


def validate_rule(cfg: RunConfig) -> str | None:
    """Problems with the learning rule's options: values, and options it does not take."""
    name = cfg.rule.name
    rule = cfg.rule_spec
    given = cfg.rule.options()
    for option in registry.inapplicable(name, given):
        takers = registry.accepting(option)
        return (f"rule.{option} does not apply to --rule={name} (it applies to "
                f"--rule={'|'.join(takers)})")
    problem = rule.problem(given)
    if problem:
        return problem
    if not rule.svd and cfg.rank.tau is not None:
        svd = "|".join(registry.svd_rules())
        return (f"rank.tau applies to rules that train SVD factors (--rule={svd}), "
                f"not --rule={name}")
    return None


def check_minimums(minimums):
    """The first of ``(name, value, minimum, note)`` whose value is below its minimum."""
    for name, value, minimum, note in minimums:
        if value < minimum:
            return f"{flag(name)} must be >= {minimum}{note}, got {value}"
    return None


def tf_config_workers(text):
    """The number of training tasks (chief and workers) in a TF_CONFIG string."""
    try:
        spec = json.loads(text)
        cluster, task = spec["cluster"], spec["task"]
        count = sum(len(cluster.get(k, [])) for k in ("chief", "worker"))
        if task["type"] not in ("chief", "worker") or count < 1:
            raise ValueError
        int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("TF_CONFIG must be JSON with cluster.worker (and cluster.chief) "
                         "address lists and task.type/task.index; see "
                         "docs/ARCHITECTURE.md") from None
    return count


def validate_distribution(cfg: RunConfig, tf_config: str | None) -> str | None:
    """Problems with runtime.strategy / runtime.logical_cpus that need no TensorFlow to find."""
    rt, batch = cfg.runtime, cfg.train.batch_size
    if rt.strategy not in STRATEGIES:
        return (f"runtime.strategy={rt.strategy!r} is not valid; choose from: "
                f"{', '.join(STRATEGIES)}")
    if rt.logical_cpus < 1:
        return f"runtime.logical_cpus must be >= 1, got {rt.logical_cpus}"
    if rt.logical_cpus > 1:
        if rt.strategy != "mirrored":
            return "runtime.logical_cpus applies to runtime.strategy=mirrored only"
        if batch % rt.logical_cpus:
            return (f"--batch_size={batch} is the global batch; it must be a multiple of "
                    f"runtime.logical_cpus={rt.logical_cpus}")
    if rt.strategy == "multi_worker":
        if not tf_config:
            return ("runtime.strategy=multi_worker needs TF_CONFIG (the cluster and this "
                    "task; docs/ARCHITECTURE.md)")
        try:
            workers = tf_config_workers(tf_config)
        except ValueError as e:
            return str(e)
        if batch % workers:
            return (f"--batch_size={batch} is the global batch; it must be a multiple of the "
                    f"{workers} workers in TF_CONFIG")
    return None
