"""Run configuration: choices, presets and validation, with no TensorFlow import.

``python -m ssa_tf.train`` validates every flag here before TensorFlow
starts, so a user's mistake costs a fraction of a second and ends with one
line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import json
import os

from ssa_tf.methods import spec as methods

MODES = methods.NAMES
MODELS = ("mlp", "smallconv", "resnet32", "resnet18")
DATASETS = ("mnist5k", "cifar10", "cifar100", "imagenet2012", "synthetic")
LABELS = ("fine", "coarse")  # cifar100 only
NORMS = ("layer", "batch", "none")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")
HEAD_INITS = ("glorot", "zero")
PRESETS = ("none", "cifar100", "imagenet")
RANK_FEEDBACK_CUTS = ("svd", "first")
# auto: mirrored on more than one GPU, else one device (ssa_tf.distribute)
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
# the learning rule's options (ssa_tf.methods.spec); None: the rule's default
METHOD_OPTIONS = methods.OPTIONS


class UsageError(Exception):
    """A mistake in what the user asked for, found after start-up (exit status 2)."""


@dataclasses.dataclass
class RunConfig:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    manual_dir: str | None = None  # imagenet2012: the ILSVRC2012_img_*.tar files
    label: str = "fine"
    # fraction of train held out to validate on; 0: validate on the final split
    validation_split: float = 0.0
    image_size: int | None = None  # imagenet2012 crop; None: 224
    synthetic_shape: tuple = (32, 32, 3)
    synthetic_classes: int = 10
    model: str = "smallconv"
    mode: str = "ssa"
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float | None = None  # None: the rule's default
    lr_decay_epochs: tuple = ()  # multiply the rate by lr_decay_factor at these epochs
    lr_decay_factor: float = 0.1
    norm: str = "layer"  # the seed: layer norm suits SSA better than batch norm
    # leaky ReLU keeps the error alive where a ReLU would block it; a zero head lets
    # a local rule's first updates count (benchmarks/ACCURACY.md, the DFA tuning)
    activation: str = "leaky_relu"
    head_init: str = "zero"  # the classifier starts at zero (s = 0 in SVD form)
    # the learning rule's options (ssa_tf.methods.spec), None: the rule's default;
    # one a rule does not take is refused
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    ortho_lambda: float | None = None
    feedback: str | None = None
    feedback_spatial: str | None = None
    feedback_init: str | None = None
    chain_jacobians: bool | None = None
    feedback_tracking: float | None = None
    stiefel_retraction: bool | None = None
    s_rate_scale: float | None = None
    seed: int = 1
    workdir: str | None = None
    max_train_examples: int | None = None
    augment: bool = True
    # rank reduction (SSA only): off when rank_tau is None
    rank_tau: float | None = None
    rank_start: int = 0
    rank_interval: int = 10
    rank_min: int = 1
    rank_exempt: tuple = ()
    # how a cut treats the feedback factors: svd (re-factored like the forward
    # ones) or first (SPEC: keep the first r components); None: the default
    rank_feedback_cut: str = "first"
    rank_final_cut: bool = False  # also cut after the last epoch
    # after each cut the rate ramps up linearly over this many steps (0: off)
    rank_warmup_steps: int = 0
    # reliability (ssa_tf.reliability): checkpoints every epoch and every N steps
    checkpoint_steps: int = 0
    keep_checkpoints: int = 2
    restart: bool = False
    skip_nonfinite_steps: int = 0
    # every N steps: angle of each module's update to the BP gradient (0: off)
    diagnostics_every: int = 0
    # distribution (ssa_tf.distribute); batch_size is the global batch
    strategy: str = "auto"
    logical_cpus: int = 1  # > 1: split the CPU into devices to try mirrored without GPUs

    @property
    def rule(self):
        return methods.get(self.mode)

    def method_options(self) -> dict:
        """The rule's options as given (None: its default)."""
        return {k: getattr(self, k) for k in METHOD_OPTIONS}

    def resolved(self) -> "RunConfig":
        """A copy with the rule's options and rate filled in (options it does not
        take stay None)."""
        rule = self.rule
        values = rule.resolve(self.method_options())
        out = dataclasses.replace(self, **values)
        if out.learning_rate is None:
            out = dataclasses.replace(out, learning_rate=rule.learning_rate)
        return out

    def resolved_learning_rate(self) -> float:
        return self.rule.learning_rate if self.learning_rate is None else self.learning_rate

    def card(self):
        return self.rule.card(self.method_options())

    def record(self) -> dict:
        """What config.json holds: every setting resolved, and the rule's locality card."""
        return {**dataclasses.asdict(self.resolved()), "card": self.card().as_dict()}


# Seed section 2 / SPEC section 6. Flags given explicitly override these.
PRESET_VALUES = {
    "none": {},
    "cifar100": dict(dataset="cifar100", model="resnet32", epochs=200, batch_size=128,
                     learning_rate=1e-4, lr_decay_epochs=(20, 40, 60),
                     rank_tau=0.95, rank_start=0, rank_interval=10),
    "imagenet": dict(dataset="imagenet2012", model="resnet18", epochs=200, batch_size=256,
                     lr_decay_epochs=tuple(range(30, 200, 30)),
                     rank_tau=0.90, rank_start=20, rank_interval=10),
}
# (alpha, beta, gamma) = (1, 0.01, 0.1) in both: the rules' defaults.
# Preset fields a rule does not take (rank cuts of a rule without SVD factors) are skipped.
RANK_FIELDS = ("rank_tau", "rank_start", "rank_interval")
# the seed: 2e-4 for BP, 5e-4 for SSA on ImageNet (and for the other local rules)
IMAGENET_LEARNING_RATE = {"bp": 2e-4, "svd-bp": 2e-4}
IMAGENET_LOCAL_LEARNING_RATE = 5e-4


def preset_values(preset, mode) -> dict:
    """The preset's fields that apply to ``mode``."""
    values = dict(PRESET_VALUES[preset])
    if mode in MODES and not methods.get(mode).svd:
        values = {k: v for k, v in values.items() if k not in RANK_FIELDS}
    if preset == "imagenet":
        values["learning_rate"] = IMAGENET_LEARNING_RATE.get(mode, IMAGENET_LOCAL_LEARNING_RATE)
    return values


def validate(cfg: RunConfig) -> str | None:
    """The first problem with ``cfg`` as one line, or None."""
    choices = [("dataset", DATASETS), ("label", LABELS), ("model", MODELS), ("mode", MODES),
               ("norm", NORMS), ("activation", ACTIVATIONS), ("head_init", HEAD_INITS),
               ("rank_feedback_cut", RANK_FEEDBACK_CUTS)]
    for name, valid in choices:
        value = getattr(cfg, name)
        if value not in valid:
            return f"--{name}={value!r} is not valid; choose from: {', '.join(valid)}"
    problem = validate_method(cfg)
    if problem:
        return problem
    if cfg.epochs < 1:
        return f"--epochs must be >= 1, got {cfg.epochs}"
    if cfg.batch_size < 1:
        return f"--batch_size must be >= 1, got {cfg.batch_size}"
    if cfg.learning_rate is not None and not cfg.learning_rate > 0:
        return f"--learning_rate must be > 0, got {cfg.learning_rate}"
    if cfg.max_train_examples is not None and cfg.max_train_examples < 1:
        return f"--max_train_examples must be >= 1, got {cfg.max_train_examples}"
    if cfg.label == "coarse" and cfg.dataset != "cifar100":
        return f"--label=coarse applies to cifar100 only, not {cfg.dataset}"
    if not 0 <= cfg.validation_split < 1:
        return f"--validation_split must be in [0, 1), got {cfg.validation_split}"
    if cfg.image_size is not None:
        if cfg.dataset != "imagenet2012":
            return f"--image_size applies to imagenet2012 only, not {cfg.dataset}"
        if cfg.image_size < 8:
            return f"--image_size must be >= 8, got {cfg.image_size}"
    if cfg.dataset == "synthetic":
        if not cfg.synthetic_shape or min(cfg.synthetic_shape) < 1:
            return f"--synthetic_shape must be positive sizes, got {cfg.synthetic_shape}"
        if cfg.synthetic_classes < 2:
            return f"--synthetic_classes must be >= 2, got {cfg.synthetic_classes}"
    if not 0 < cfg.lr_decay_factor <= 1:
        return f"--lr_decay_factor must be in (0, 1], got {cfg.lr_decay_factor}"
    if cfg.rank_tau is not None and not 0 < cfg.rank_tau <= 1:
        return f"--rank_tau must be in (0, 1], got {cfg.rank_tau}"
    minimums = [("rank_warmup_steps", 0, ""), ("checkpoint_steps", 0, " (0: at epoch ends only)"),
                ("keep_checkpoints", 2, ""), ("diagnostics_every", 0, " (0: off)"),
                ("skip_nonfinite_steps", 0, "")]
    if cfg.rank_tau is not None:
        minimums = [("rank_interval", 1, ""), ("rank_start", 0, ""), ("rank_min", 1, ""),
                    *minimums]
    problem = check_minimums(cfg, minimums)
    if problem:
        return problem
    problem = validate_distribution(cfg, os.environ.get("TF_CONFIG"))
    if problem:
        return problem
    if cfg.rank_tau is not None and not rank_cut_epochs(cfg):
        return (f"--rank_tau={cfg.rank_tau} would never cut: the first cut comes after epoch "
                f"{max(cfg.rank_start, cfg.rank_interval, 1)} and the run has "
                f"--epochs={cfg.epochs} (lower --rank_interval or --rank_start, or add "
                f"--rank_final_cut)")
    return None


def rank_cut_epochs(cfg: RunConfig) -> list:
    """The epochs (from 1) after which the rank callback cuts (ssa_tf.rank.RankPruning)."""
    last = cfg.epochs + (1 if cfg.rank_final_cut else 0)
    return [e for e in range(1, last) if e >= max(cfg.rank_start, 1)
            and (e - cfg.rank_start) % cfg.rank_interval == 0]


def validate_method(cfg: RunConfig) -> str | None:
    """Problems with the learning rule's options: values, and options it does not take."""
    rule = cfg.rule
    given = cfg.method_options()
    for name in methods.inapplicable(cfg.mode, given):
        takers = methods.accepting(name)
        return (f"--{name} does not apply to --mode={cfg.mode} (it applies to "
                f"--mode={'|'.join(takers)})")
    o = rule.resolve(given)
    for name, valid in rule.choices.items():
        if o[name] not in valid:
            return f"--{name}={o[name]!r} is not valid; choose from: {', '.join(valid)}"
    for name in ("alpha", "beta", "gamma", "ortho_lambda"):
        if name in o and o[name] < 0:
            return f"--{name} must be >= 0, got {o[name]}"
    if given["feedback_spatial"] is not None and o.get("feedback") != "global":
        return (f"--feedback_spatial applies to the global route only, not "
                f"--feedback={o.get('feedback')}")
    if "feedback_tracking" in o and not 0 <= o["feedback_tracking"] <= 1:
        return f"--feedback_tracking must be in [0, 1], got {o['feedback_tracking']}"
    if "s_rate_scale" in o and not o["s_rate_scale"] > 0:
        return f"--s_rate_scale must be > 0, got {o['s_rate_scale']}"
    if rule.svd and o["alpha"] == o["beta"] == o["gamma"] == 0:
        return "--alpha, --beta and --gamma are all 0: there would be nothing to learn from"
    if not rule.svd:
        if cfg.rank_tau is not None:
            return (f"--rank_tau applies to rules that train SVD factors "
                    f"(--mode={'|'.join(n for n, r in methods.RULES.items() if r.svd)}), "
                    f"not --mode={cfg.mode}")
    return None


def check_minimums(obj, minimums):
    """The first of ``(name, minimum, note)`` whose value on ``obj`` is below its minimum."""
    for name, minimum, note in minimums:
        value = getattr(obj, name)
        if value < minimum:
            return f"--{name} must be >= {minimum}{note}, got {value}"
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
                         "address lists and task.type/task.index; see BUILD.md") from None
    return count


def validate_distribution(cfg: RunConfig, tf_config: str | None) -> str | None:
    """Problems with --strategy / --logical_cpus that need no TensorFlow to find."""
    if cfg.strategy not in STRATEGIES:
        return f"--strategy={cfg.strategy!r} is not valid; choose from: {', '.join(STRATEGIES)}"
    if cfg.logical_cpus < 1:
        return f"--logical_cpus must be >= 1, got {cfg.logical_cpus}"
    if cfg.logical_cpus > 1:
        if cfg.strategy != "mirrored":
            return "--logical_cpus applies to --strategy=mirrored only"
        if cfg.batch_size % cfg.logical_cpus:
            return (f"--batch_size={cfg.batch_size} is the global batch; it must be a multiple "
                    f"of --logical_cpus={cfg.logical_cpus}")
    if cfg.strategy == "multi_worker":
        if not tf_config:
            return "--strategy=multi_worker needs TF_CONFIG (the cluster and this task; BUILD.md)"
        try:
            workers = tf_config_workers(tf_config)
        except ValueError as e:
            return str(e)
        if cfg.batch_size % workers:
            return (f"--batch_size={cfg.batch_size} is the global batch; it must be a multiple "
                    f"of the {workers} workers in TF_CONFIG")
    return None
