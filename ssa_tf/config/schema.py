"""One typed configuration for a run, in sections: data / model / rule / train / rank / runtime.

    cfg = RunConfig()                               # the defaults
    cfg = cfg.with_overrides(["rule.beta=0", "rank.tau=0.9"])    # --set SECTION.FIELD=VALUE
    cfg.rule.name, cfg.rule.beta, cfg.rank.tau      # typed access
    cfg.settings()                                  # {"rule.beta": 0.0, "rank.tau": 0.9, ...}
    cfg.replace({"train.epochs": 5})                # a copy with settings changed

Every setting has one name, ``SECTION.FIELD`` (and ``seed``), the same in ``--set``,
presets, grids, ``config.json``, experiment records and searches. ``settings()`` is the
canonical record. Files written before this vocabulary (flat names: "beta",
"rank_tau"; the ``method`` section: "method.mode", "method.beta") are read by
``ssa_tf.config.legacy`` alone. No TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import typing

from ssa_tf.methods import registry


@dataclasses.dataclass
class DataConfig:
    dataset: str = "mnist5k"
    data_dir: str | None = None
    manual_dir: str | None = None  # imagenet2012: the ILSVRC2012_img_*.tar files
    label: str = "fine"  # cifar100: fine (100 classes) or coarse (20)
    # the last fraction of train, held out to validate on (every choice is made on
    # it); the test split is evaluated once, at the end. 0: no validation at all
    validation_split: float = 0.1
    image_size: int | None = None  # imagenet2012 crop; None: 224
    synthetic_shape: tuple = (32, 32, 3)
    synthetic_classes: int = 10
    max_train_examples: int | None = None  # train on the first N of what validation leaves
    augment: bool = True
    # tf.data's autotuning (off: an epoch's iterator once waited up to a minute for its
    # thread when deleted; ssa_tf.data.core.without_autotune)
    autotune: bool = False


@dataclasses.dataclass
class ModelConfig:
    model: str = "smallconv"  # a built-in model (allowed_values.MODELS) or a file of the user's
    # norm, activation and conv_factorization shape the built-in models only; None: the
    # built-in models' default (BUILT_IN_DEFAULTS), and for a user's model file none at
    # all (its layers are its own: config.validate refuses them given with a file)
    norm: str | None = None
    activation: str | None = None
    # the classifier's initial weights: glorot or zero (s = 0 in SVD form); None: the
    # rule's (zero for dfa, glorot for the others: a zero SVD head starves backprop)
    head_init: str | None = None
    # how an SVD convolution views its kernel (docs/ALGORITHM.md §2): spatial, the paper's
    # (kh x 1 then 1 x kw); channel (kh x kw to rank r, then 1x1): cheaper at every rank
    conv_factorization: str | None = None


# what the built-in models get for a setting left at None: layer norm (the paper: it suits
# SSA better than batch norm), leaky ReLU (it keeps the error alive where a ReLU would block
# it; benchmarks/reports/ACCURACY.md, the DFA tuning), the paper's spatial factorization
BUILT_IN_DEFAULTS = {"norm": "layer", "activation": "leaky_relu",
                     "conv_factorization": "spatial"}
# "none" is one of model.norm's values (no norm), not "unset" as for other settings
LITERAL_NONE = ("model.norm",)


def is_model_file(name) -> bool:
    """``model.model`` names a file of the user's (``--model=path/to/file.py``)."""
    return str(name).endswith(".py")


def fill_defaults(rule_name, settings: dict, user_model=False) -> dict:
    """``settings`` (``SECTION.FIELD`` names, as ``RunConfig.settings``) with every None that
    has a default filled in: the one place a default is resolved. From rule ``rule_name`` (its
    file in ``ssa_tf/methods/rules/``): its options (``rule.*``, ``RuleSpec.resolve``;
    an option it does not take stays as given), ``train.learning_rate`` and
    ``model.head_init``; for a built-in model (not ``user_model``: a user's file or Keras
    model has layers of its own) ``BUILT_IN_DEFAULTS``. Only the names in ``settings`` are
    filled.

    ``RunConfig.resolved`` fills a run's settings here, and everything downstream of a
    config (``model_from_config``, ``build_model``, the rate) takes the resolved values;
    ``SSAModel`` and ``compile_model`` called without a config fill theirs here too."""
    rule = registry.get(rule_name)
    out = dict(settings)
    given = {k[len("rule."):]: v for k, v in settings.items()
             if k.startswith("rule.") and k != "rule.name"}
    out.update((f"rule.{k}", v) for k, v in rule.resolve(given).items()
               if f"rule.{k}" in out)
    own = {"train.learning_rate": rule.learning_rate, "model.head_init": rule.head_init,
           **({} if user_model else {f"model.{k}": v for k, v in BUILT_IN_DEFAULTS.items()})}
    out.update((k, v) for k, v in own.items() if k in out and out[k] is None)
    return out


def canonical_model_settings(settings: dict) -> dict:
    """A record's settings (config.json, a search's) with norm, activation and
    factorization as this version records them, to compare records of either age: a
    built-in model's defaults filled in; for a user's file None, where older records
    held the built-in models' defaults."""
    user = is_model_file(settings.get("model.model", ""))
    out = dict(settings)
    for field, default in BUILT_IN_DEFAULTS.items():
        name = f"model.{field}"
        if name in out and user and out[name] == default:
            out[name] = None
        elif name in out and not user and out[name] is None:
            out[name] = default
    return out


def _rule_options(self) -> dict:
    return {k: getattr(self, k) for k in registry.OPTIONS}


# The learning rule (its name) and its options, one field per option some rule takes (the
# rule files in ssa_tf/methods/rules/ define them and their defaults); None: the rule's default
RuleConfig = dataclasses.make_dataclass(
    "RuleConfig", [("name", str, registry.DEFAULT),
                   *((name, typing.Optional[kind], None)
                     for name, kind in registry.OPTION_TYPES.items())],
    namespace={"options": _rule_options, "__module__": __name__,
               "__doc__": "The learning rule (its name) and its options; None: the rule's "
                          "default (ssa_tf/methods/rules/)."})


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 64  # the global batch
    learning_rate: float | None = None  # None: the rule's default
    lr_decay_epochs: tuple = ()  # multiply the rate by lr_decay_factor at these epochs
    lr_decay_factor: float = 0.1
    # compile the step with XLA (Keras's jit_compile): the same training, compiled once per
    # input shape, 30-40 s for resnet32's SSA step, then 0.6-0.8x its time on this CPU
    # (benchmarks/reports/EFFICIENCY.md); a resizing cut compiles again (rank.cut_form);
    # turned off, with a notice, under a strategy with several CPU devices
    jit_compile: bool = False
    # every convolution's input gradient (the error carried to the layer below) in
    # bfloat16, its kernel's gradient, the forward and the weights in float32
    # (ssa_tf/nn/precision.py); SSA's chain has its own, rule.chain_dtype
    error_dtype: str = "float32"


@dataclasses.dataclass
class RankConfig:
    """Rank cuts during training (rules with SVD factors): off while tau is None."""
    tau: float | None = None
    start: int = 0
    interval: int = 10
    min: int = 1
    exempt: tuple = ()
    # the first SVD layer (it reads the pixels) and the classifier keep full rank: cutting
    # the first conv of smallconv from 9 to 8 cost 8 points of validation at once, and the
    # two hold 0.3% of its parameters (benchmarks/reports/EXPORT.md); False: every layer
    # (the paper's)
    keep_ends: bool = True
    # slots: no re-factoring, the kept components keep their slots and B its columns at
    # them (the alignment term stays continuous; docs/ALGORITHM.md §5); first: the paper's exact
    # re-factoring with B's first r columns; svd: B re-factored the same way. None:
    # slots, or first for energy=outputs (that cut re-factors by construction)
    feedback_cut: str | None = None
    # what tau is a fraction of: the weight's singular-value energy (the paper's) or each
    # layer's output energy on energy_batches training batches (that cut keeps the outputs)
    energy: str = "weights"
    energy_batches: int = 8
    final_cut: bool = False  # also cut after the last epoch
    warmup_steps: int = 0  # after each cut the rate ramps up over this many steps
    # the fraction kept of the SVD dense layers' energy (the classifier's too, unless
    # keep_ends keeps it); None: tau. A CNN's dense layers can hold most of its parameters
    # (72% of smallconv's) and few of its multiply-adds: a cut can take them deeper than
    # the convolutions (benchmarks/reports/deploy_cut.md)
    dense_tau: float | None = None
    # resize: each cut recreates the layers at their new ranks (the steps after it cost
    # less; the step is retraced, 5-7 s at resnet32); in_place: the dropped components are
    # zeroed, nothing retraces and the steps cost the full rank's; the end of the run drops
    # the zeros. The same training either way (tests/test_cut_in_place.py); a resume keeps
    # the run's (its checkpoints hold the zeros, or not)
    cut_form: str = "resize"


def is_cut_epoch(done, start, interval) -> bool:
    """The one cut schedule: a cut follows epoch ``done`` (counting from 1) when it is at or
    after ``start`` (and at least 1) and a whole number of ``interval``s from it."""
    return done >= max(start, 1) and (done - start) % interval == 0


def cut_epochs(epochs, start, interval, final_cut=False) -> list:
    """The epochs (from 1) after which the rank callback cuts: training still ahead, and
    after the last epoch too with ``final_cut``."""
    last = epochs + (1 if final_cut else 0)
    return [e for e in range(1, last) if is_cut_epoch(e, start, interval)]


@dataclasses.dataclass
class RuntimeConfig:
    workdir: str | None = None
    restart: bool = False
    checkpoint_steps: int = 0  # also checkpoint every N steps (0: at epoch ends only)
    keep_checkpoints: int = 2
    skip_nonfinite_steps: int = 0
    diagnostics_every: int = 0  # every N steps: each module's angle to the BP gradient
    strategy: str = "auto"  # auto: mirrored on more than one GPU, else one device
    logical_cpus: int = 1  # > 1: split the CPU into devices to try mirrored without GPUs
    # bar: Keras's progress bar; epoch: one line per epoch; none: silent;
    # auto: the bar on a terminal, one line per epoch in a log file
    progress: str = "auto"


SECTIONS = {"data": DataConfig, "model": ModelConfig, "rule": RuleConfig,
            "train": TrainConfig, "rank": RankConfig, "runtime": RuntimeConfig}


@dataclasses.dataclass
class RunConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    rule: RuleConfig = dataclasses.field(default_factory=RuleConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    rank: RankConfig = dataclasses.field(default_factory=RankConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    seed: int = 1

    # -- the record: {SECTION.FIELD: value, ..., "seed": n} -------------------
    def settings(self) -> dict:
        out = {f"{section}.{f.name}": getattr(getattr(self, section), f.name)
               for section in SECTIONS for f in dataclasses.fields(getattr(self, section))}
        out["seed"] = self.seed
        return out

    @classmethod
    def from_settings(cls, values: dict) -> "RunConfig":
        """A config from ``settings()``'s names (those not given: the defaults); unknown
        names are a ValueError; a list where a tuple belongs (JSON's) becomes a tuple."""
        values = dict(values)
        sections = {}
        for section, klass in SECTIONS.items():
            kw = {}
            for f in dataclasses.fields(klass):
                name = f"{section}.{f.name}"
                if name in values:
                    value = values.pop(name)
                    kw[f.name] = tuple(value) if isinstance(value, list) else value
            sections[section] = klass(**kw)
        seed = values.pop("seed", 1)
        if values:
            raise ValueError(f"unknown settings: {', '.join(sorted(values))}")
        return cls(**sections, seed=seed)

    def replace(self, changes: dict | None = None, /, **more) -> "RunConfig":
        """A copy with settings changed: ``cfg.replace({"train.epochs": 5})``, or
        ``cfg.replace(seed=2)`` (names of ``settings()``; ``**`` takes dotted ones too)."""
        return RunConfig.from_settings({**self.settings(), **(changes or {}), **more})

    # -- overrides: --set SECTION.FIELD=VALUE ---------------------------------
    def with_overrides(self, assignments) -> "RunConfig":
        """A copy with each ``SECTION.FIELD=VALUE`` applied in order (ValueError if malformed)."""
        cfg = RunConfig.from_settings(self.settings())
        for text in assignments:
            path, sep, raw = text.partition("=")
            if not sep:
                raise ValueError(f"--set {text!r}: expected SECTION.FIELD=VALUE")
            cfg.set(path.strip(), raw.strip())
        return cfg

    def set(self, path, raw):
        """Set the field at ``path`` ("rank.tau", or "seed") from its text ``raw``."""
        if path == "seed":
            self.seed = _parse(path, raw, int)
            return
        section, _, field = path.partition(".")
        if section not in SECTIONS:
            raise ValueError(f"--set {path}: unknown section {section!r}; sections: "
                             f"{', '.join(SECTIONS)}")
        hints = typing.get_type_hints(SECTIONS[section])
        if field not in hints:
            names = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
            raise ValueError(f"--set {path}: {section} has no field {field!r}; its fields: "
                             f"{names}")
        hint = str if path in LITERAL_NONE else hints[field]
        setattr(getattr(self, section), field, _parse(path, raw, hint))

    # -- the learning rule ----------------------------------------------------
    @property
    def rule_spec(self):
        """The rule's ``RuleSpec`` (``ssa_tf.methods.registry``): its options, card, ..."""
        return registry.get(self.rule.name)

    def resolved(self) -> "RunConfig":
        """A copy with every default filled in (``fill_defaults``): the rule's options
        (options the rule does not take stay None), rate and head, and a built-in model's
        norm, activation and factorization (a user's file takes none of them). What
        consumes a config (``model_from_config``, the rate, ``config.json``) reads these."""
        return RunConfig.from_settings(fill_defaults(
            self.rule.name, self.settings(), user_model=is_model_file(self.model.model)))

    def learning_rate(self) -> float:
        """The run's rate: ``train.learning_rate``, or the rule's (as ``resolved``)."""
        return self.resolved().train.learning_rate

    def card(self):
        card = self.rule_spec.card(self.rule.options())
        if self.rank.tau is not None and self.rule_spec.svd:
            # what each cut passes to the feedback; the default as nn.svd.resolve_feedback_cut
            cut = self.rank.feedback_cut or ("first" if self.rank.energy == "outputs"
                                             else "slots")
            card = card.with_cuts(cut)
        return card

    def record(self) -> dict:
        """What config.json holds: every setting resolved, and the rule's locality card."""
        return {**self.resolved().settings(), "card": self.card().as_dict()}


# settings that say where and how a run works, not what it trains: a resumed run may
# change them (and its length, train.epochs), and an experiment's key leaves them out
OPERATIONAL = ("data.data_dir", "data.manual_dir", "data.autotune", "rule.recompute",
               "train.jit_compile",
               "rule.hold_within_peak", "rule.replay_slices", "rule.replay_chained",
               "runtime.workdir",
               "runtime.restart", "runtime.progress", "runtime.checkpoint_steps",
               "runtime.keep_checkpoints", "runtime.skip_nonfinite_steps",
               "runtime.diagnostics_every")

FIELD_HELP = {section: [f.name for f in dataclasses.fields(klass)]
              for section, klass in SECTIONS.items()}


def _parse(path, raw, hint):
    """``raw`` (text) as the type ``hint`` says: int, float, bool, str, tuple, or None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    kind = args[0] if args else hint
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if kind is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is tuple:
            items = [p.strip() for p in raw.strip("()[]").split(",") if p.strip()]
            return tuple(_number_or_text(p) for p in items)
        return raw
    except ValueError:
        name = getattr(kind, "__name__", str(kind))
        raise ValueError(f"--set {path}={raw}: expected {name}") from None


def _number_or_text(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
