"""The trainer: one Keras model whose ``train_step`` asks its learning rule for the step.

The rule (``ssa_tf.methods.rules``) computes every module's gradient: end to
end for ``bp``/``svd-bp``; module by module for the local rules, each module
under its own ``GradientTape`` with its input stop-gradiented, from its local
loss alpha CE_i + beta L_align,i + gamma L_ortho,i (docs/ALGORITHM.md §3-§4). The
model applies them with one optimizer step and keeps the logs.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from ssa_tf.config import legacy
from ssa_tf.config.schema import RunConfig, fill_defaults, is_model_file
from ssa_tf.methods import base, registry
from ssa_tf.nn import build_modules, svd_layers
from ssa_tf.nn.graph import UnsupportedLayerError
from ssa_tf.nn.precision import set_error_dtype
from ssa_tf.nn.user import describe_preprocessing, input_preprocessing
from ssa_tf.training.optimizer import FactorAdam, FusedAdam


# get_config's "layout": 2 since the built-in networks' modules are GraphModules
# (ssa_tf.training.saved reads the files of layout 1, which has no "layout")
MODULE_LAYOUT = 2


@keras.saving.register_keras_serializable(package="ssa_tf")
class SSAModel(keras.Model):
    """A network of local modules trained by one learning rule (``ssa_tf.methods``).

    ``rule`` names the learning rule (one of ``ssa_tf.methods.registry.NAMES``: bp, svd-bp,
    dfa, ssa, fa, bp-lagged-copy, dkp, ssa-dkp), ``rule_name`` on the model; ``self.rule``
    is the rule object that computes each step. The
    rule's options (``methods.spec``) are keyword arguments, None meaning its
    default. ``head_init`` None is the rule's; ``norm``, ``activation`` and
    ``conv_factorization`` None are the built-in models' (``config.schema.BUILT_IN_DEFAULTS``;
    a user's ``network`` has its own layers), filled as a run's config fills them
    (``config.schema.fill_defaults``). ``get_config`` holds everything needed to rebuild
    the model at its current ranks, so ``keras.models.load_model`` restores a
    (rank-reduced) model exactly (``from_config`` reads files saved before the rule's
    name was "rule" too).
    """

    def __init__(self, architecture="mlp", input_shape=(28, 28, 1), num_classes=10,
                 rule=registry.DEFAULT,
                 norm=None, activation=None, head_init=None, seed=1, ranks=None,
                 conv_factorization=None, input_stats=None, network=None,
                 module_ends=None, **kwargs):
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in registry.OPTIONS}
        super().__init__(**kwargs)
        self.rule = registry.make(rule, given)
        # None: the default (from a config, model_from_config passes them resolved)
        norm, activation, head_init, conv_factorization = fill_defaults(
            rule, {"model.norm": norm, "model.activation": activation,
                   "model.head_init": head_init, "model.conv_factorization": conv_factorization},
            user_model=network is not None).values()
        self.architecture = architecture
        self.input_dims = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.norm, self.activation, self.head_init = norm, activation, head_init
        self.conv_factorization = conv_factorization
        # the one input contract (users met models taking raw and normalized input alike):
        # raw pixels in, (x - mean) / std as the first
        # operation of every forward pass; None (models saved before it): normalized in
        self.input_stats = None if input_stats is None else tuple(
            tuple(float(v) for v in part) for part in input_stats)
        self.seed = int(seed)
        feedback_init = self.rule.options.get("feedback_init", "random")
        # a user's own Keras model (ssa_tf.nn.user), or a built-in architecture
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        # its config only: an attribute holding the model would make its (unused) weights
        # the SSAModel's too
        self.network_config = (None if network is None
                               else keras.saving.serialize_keras_object(network))
        self.module_ends = None if module_ends is None else tuple(module_ends)
        # one path for both: the network as a Keras model, converted (nn.models)
        self.local_modules = build_modules(
            architecture, self.input_dims, self.num_classes, svd=self.rule.svd,
            local=not self.rule.end_to_end, norm=norm, seed=self.seed,
            feedback_init=feedback_init, ranks=ranks, activation=activation,
            head_init=head_init, conv_factorization=conv_factorization, network=network,
            ends=self.module_ends)
        # Build every sublayer now: the optimizer must see all variables
        # before it is built ("Unknown variable" otherwise).
        self._build_all()
        # steps with a NaN or Inf, per module and term (reliability.divergence_guard)
        self.nonfinite_tracker = NonFiniteCounter(len(self.module_names()),
                                                  len(self.NONFINITE_TERMS))
        # the local-loss terms, logged under what they are and only when they count
        # (a negative "ce_surrogate" and an ortho term growing at gamma 0 puzzled a new
        # user); README, "What the logs mean"
        if not self.rule.end_to_end:
            self.ce_tracker = keras.metrics.Mean(name=local_signal_metric(self.rule))
        o = self.rule.options
        if self.rule.svd and o.get("beta"):
            self.align_tracker = keras.metrics.Mean(name="align_term")
        if self.rule.svd and (o.get("gamma") or o.get("ortho_lambda")):
            self.ortho_tracker = keras.metrics.Mean(name="ortho_term")

    # -- construction ---------------------------------------------------------
    def normalize_input(self, x):
        """(x - mean) / std per channel with ``input_stats`` (raw pixels in), else x."""
        if self.input_stats is None:
            return x
        mean, std = (tf.constant(v, tf.float32) for v in self.input_stats)
        return (tf.cast(x, tf.float32) - mean) / std

    def input_description(self) -> dict:
        """What the model takes, for summary.json and the README's contract."""
        own = [describe_preprocessing(l) for l in input_preprocessing(self)]
        if own and self.input_stats is None:  # a user's model preprocessing itself
            return {"values": "raw pixels in [0, 255], channels last",
                    "normalization": f"inside the model, by its own first layers: "
                                     f"{'; '.join(own)}"}
        if self.input_stats is None:
            return {"values": "normalized tensors (a model saved before the input contract)"}
        mean, std = self.input_stats
        return {"values": "raw pixels in [0, 255], channels last",
                "normalization": f"inside the model: (x - {list(mean)}) / {list(std)}"}

    def _build_all(self):
        x = ops.zeros((1, *self.input_dims))
        shapes = []
        for m in self.local_modules:
            x = m(x, training=False)
            shapes.append(tuple(x.shape[1:]))
        self.module_output_shapes = shapes
        self.rule.build(self)
        self.built = True

    def build(self, input_shape=None):
        # everything was built in __init__; Keras calls this on load
        self.built = True

    @property
    def rule_name(self) -> str:
        """The learning rule's name (``registry.NAMES``)."""
        return self.rule.name

    @property
    def options(self) -> dict:
        """The learning rule's resolved options."""
        return dict(self.rule.options)

    def card(self):
        return self.rule.card()

    def feedback_changed(self):
        """The feedback factors changed (a rank cut): the rule refreshes what it derives."""
        route = getattr(self.rule, "route", None)
        if route is not None:
            route.refresh(self)

    def svd_layers(self):
        return [l for m in self.local_modules for l in svd_layers(m)]

    def ranks(self) -> dict:
        """Each SVD layer's rank: its variables' (what a checkpoint restores)."""
        return {l.name: l.rank for l in self.svd_layers()}

    def live_ranks(self) -> dict:
        """Each SVD layer's live rank: its rank less the components cut in place."""
        return {l.name: l.live_rank for l in self.svd_layers()}

    NONFINITE_TERMS = base.TERMS

    def module_names(self):
        """The local modules' names; an end-to-end rule trains the network as one module."""
        return self.rule.module_names(self)

    def get_config(self):
        return {
            **super().get_config(),
            "architecture": self.architecture, "input_shape": self.input_dims,
            "num_classes": self.num_classes, "rule": self.rule_name, "norm": self.norm,
            "activation": self.activation, "head_init": self.head_init,
            "conv_factorization": self.conv_factorization, "input_stats": self.input_stats,
            "seed": self.seed, "ranks": self.ranks(), **self.rule.options,
            # the modules are GraphModules (training.saved reads the layout before)
            "layout": MODULE_LAYOUT,
            # a user's model travels as its Keras config (its weights are the model's)
            **({"network": self.network_config, "module_ends": self.module_ends}
               if self.network_config is not None else {}),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """The model of ``get_config``'s dict, of any age (``config.legacy``: a model saved
        before the rule's name was "rule" says "mode", as tests/data/run_v1/model.keras)."""
        config = legacy.read_model_config(config)
        config.pop("layout", None)  # what training.saved.load reads
        return cls(**config)

    # -- forward --------------------------------------------------------------
    def call(self, x, training=False):
        x = self.normalize_input(x)
        for m in self.local_modules:
            x = m(x, training=training)
        return x

    # -- training -------------------------------------------------------------
    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        grads_and_vars, logits, terms, bad = self.rule.gradients(self, x, y)
        grads = _zero_if(bad, [g for g, _ in grads_and_vars])
        self.optimizer.apply_gradients(zip(grads, [v for _, v in grads_and_vars]))
        self.rule.after_step(self)
        if self.rule.end_to_end:
            loss = terms[0] / replicas
        else:
            # the logged loss is the network's CE, as in BP, so rules compare
            loss = self._compute_loss(x=x, y=y, y_pred=logits, training=True)
        for name, value in zip(("ce_tracker", "align_tracker", "ortho_tracker"), terms):
            tracker = getattr(self, name, None)
            if tracker is not None and not (name == "ce_tracker" and self.rule.end_to_end):
                tracker.update_state(value)
        self.nonfinite_tracker.update_state(bad)
        # Keras scales a compiled loss by 1/replicas (so that replicas' gradients
        # sum to the global mean); the logged value is the unscaled one
        self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(x)[0])
        logs = self.compute_metrics(x, y, logits)
        logs.pop(self.nonfinite_tracker.name, None)
        return logs

    def test_step(self, data):
        # the local-loss terms are training quantities; keep them out of val_*
        logs = super().test_step(data)
        return {k: v for k, v in logs.items()
                if k not in TRAINING_ONLY_METRICS and k != self.nonfinite_tracker.name}

    def local_gradients(self, x, y, error=None):
        """Each module's update as the rule computes it: (list of (grad, var)),
        the logits, the summed (CE, alignment, orthogonality) terms and the
        (modules, 4) non-finite flags. ``error`` holds e fixed (tests)."""
        return self.rule.gradients(self, x, y, error)


def retrace(model):
    """Drop the compiled functions: they captured variables a rank cut replaced."""
    model.make_train_function(force=True)
    model.make_test_function(force=True)
    model.make_predict_function(force=True)


def local_signal_metric(rule) -> str:
    """The logged name of the hidden modules' CE part: the mean inner product of each
    module's feedback signal with its output, summed over modules (its gradient is the
    update; its value can be negative and is no loss), or, for the local route, the
    read-outs' own cross-entropy."""
    route = getattr(rule, "route", None)
    return "readout_ce" if route is not None and not route.needs_error else "feedback_dot_output"


# logged during training only (SSAModel.test_step drops them from val_*)
TRAINING_ONLY_METRICS = ("feedback_dot_output", "readout_ce", "align_term", "ortho_term")


def _zero_if(bad, grads):
    """``grads``, or zeros when ``bad`` flags anything: a non-finite step must not
    reach the weights (Adam then moves by its momentum only)."""
    ok = tf.equal(tf.reduce_sum(bad), 0.0)
    return [g if g is None else tf.where(ok, g, tf.zeros_like(g)) for g in grads]


@keras.saving.register_keras_serializable(package="ssa_tf")
class NonFiniteCounter(keras.metrics.Metric):
    """Counts, per module and term, the steps whose value was NaN or Inf
    (summed over replicas)."""

    def __init__(self, modules=1, terms=4, name="nonfinite", **kwargs):
        super().__init__(name=name, **kwargs)
        self.modules, self.terms = int(modules), int(terms)
        self.counts = self.add_variable(shape=(self.modules, self.terms), initializer="zeros",
                                        name="counts")

    def update_state(self, bad):
        self.counts.assign_add(tf.cast(bad, self.counts.dtype))

    def result(self):
        return tf.convert_to_tensor(self.counts)

    def get_config(self):
        return {**super().get_config(), "modules": self.modules, "terms": self.terms}


def model_from_config(cfg, input_shape, num_classes) -> SSAModel:
    """The (uncompiled) model of a ``RunConfig``, its weights drawn from ``cfg.seed``, taking
    raw pixels of its dataset. The one model factory: ``build_model`` is it for settings
    given as arguments."""
    from ssa_tf import data as data_lib

    keras.utils.set_random_seed(cfg.seed)
    model = _model_from_config(cfg.resolved(), input_shape, num_classes,
                               data_lib.input_normalization(cfg.data.dataset),
                               dataset=cfg.data.dataset)
    # the run's batch: what an SVD convolution's automatic form counts the cost of merging
    # its kernel against (the global batch, so that every strategy computes in one form)
    for layer in model.svd_layers():
        if hasattr(layer, "batch_hint"):  # the convolutions
            layer.batch_hint = cfg.train.batch_size
    return model


def _model_from_config(cfg, input_shape, num_classes, stats, dataset=None,
                       **extra) -> SSAModel:
    """The ``SSAModel`` of a resolved ``RunConfig`` (``cfg.resolved()``: every default
    filled in, none resolved here) normalizing its input by ``stats``; ``extra``: more
    ``SSAModel`` arguments (``ranks``, ...); ``dataset`` names the data in a user's file's
    errors."""
    from ssa_tf import model_file
    from ssa_tf.errors import UsageError
    from ssa_tf.nn.user import leading_preprocessing

    m = cfg.model
    options = dict(rule=cfg.rule.name, head_init=m.head_init, seed=cfg.seed,
                   **cfg.rule.options(), **extra)
    if not is_model_file(m.model):
        model = SSAModel(m.model, input_shape, num_classes, norm=m.norm,
                         activation=m.activation, conv_factorization=m.conv_factorization,
                         input_stats=stats, **options)
    else:
        network, ends = model_file.user_network(m.model, input_shape, num_classes, dataset)
        if leading_preprocessing(network):
            stats = None  # it preprocesses the raw pixels itself: no second time
        try:
            # a user's model has no norm, activation or factorization of ours to record
            model = SSAModel(network.name, input_shape, num_classes, norm=None,
                             activation=None, conv_factorization=None, input_stats=stats,
                             network=network, module_ends=ends, **options)
        except UsageError as e:  # a layer, or a module end, the rules cannot train
            raise UsageError(f"--model={m.model}: {e}") from None
    try:
        set_error_dtype(model, cfg.train.error_dtype)
    except UsageError as e:  # only a user's convolution can be one it cannot cover
        raise UsageError(f"--model={m.model}: {e}") from None
    return model


# build_model's keyword arguments that are a run's settings, and their names
MODEL_SETTINGS = {"seed": "seed", "error_dtype": "train.error_dtype",
                  **{k: f"model.{k}" for k in ("norm", "activation", "head_init",
                                               "conv_factorization")},
                  **{k: f"rule.{k}" for k in registry.OPTIONS}}


def build_model(architecture, input_shape, num_classes, rule=registry.DEFAULT, learning_rate=None,
                jit_compile=False, **kwargs):
    """The model of the run these settings make, built by ``model_from_config``'s factory
    from the resolved ``RunConfig`` (``MODEL_SETTINGS`` among ``kwargs``; None: the
    default), and compiled with Adam at its rate (None: the rule's), sparse CE and
    accuracy. The other ``kwargs`` (``input_stats``: None takes normalized input;
    ``ranks``, ...) go to ``SSAModel``. Unlike a run, it leaves the global seed and the
    convolutions' batch hint as they are."""
    settings = {MODEL_SETTINGS[k]: kwargs.pop(k) for k in list(kwargs) if k in MODEL_SETTINGS}
    cfg = RunConfig().replace({"model.model": architecture, "rule.name": rule,
                               "train.learning_rate": learning_rate, **settings}).resolved()
    model = _model_from_config(cfg, input_shape, num_classes, kwargs.pop("input_stats", None),
                               **kwargs)
    return compile_model(model, cfg.train.learning_rate, jit_compile)


def compile_model(model, learning_rate=None, jit_compile=False, s_rate_scale=None,
                  steps_per_epoch=0):
    """Compile with Adam at ``learning_rate`` (a rate or a schedule; None: the rule's, as a
    config resolves it); a rule with its own rates
    (``s_rate_scale``, a learned feedback's ``rates()``) gets ``FactorAdam``, whose
    per-epoch feedback decay counts ``steps_per_epoch`` steps (0: no decay)."""
    lr = fill_defaults(model.rule_name,
                       {"train.learning_rate": learning_rate})["train.learning_rate"]
    if s_rate_scale is None:
        s_rate_scale = model.rule.options.get("s_rate_scale", 1.0)
    rates = model.rule.rates()
    if s_rate_scale == 1.0 and not rates:
        optimizer = FusedAdam(learning_rate=lr)
    else:
        optimizer = FactorAdam(learning_rate=lr, s_rate_scale=s_rate_scale,
                               steps_per_epoch=steps_per_epoch, **rates)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile)
    return model
