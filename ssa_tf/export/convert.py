"""Into SVD form: ``to_ssa`` turns a trained Keras model into an SSA model.

Every ``Dense``/``Conv2D`` of a Sequential or functional Keras model becomes
its SVD layer, initialized from the trained weights (exact at full rank;
optional rank or energy cut), with fixed feedback factors. An activation
inside the layer is split into a separate ``Activation`` after it (SVD layers
are linear). A BP- or DFA-trained ``SSAModel`` becomes the same architecture
under rule ``ssa``, so it can be fine-tuned with SSA's local losses. The way
back is ``ssa_tf.export.merge.merge`` (re-exported here).

Returns the new model and one ``LayerRecord`` per weight layer.
"""

from __future__ import annotations

import keras

from ssa_tf.nn.graph import (PLAIN_WEIGHT_TYPES, UnsupportedLayerError, activation_name,
                             all_layers, clone_call, format_records, is_leaf, layer_record,
                             linear_copy, rewrite)
from ssa_tf.export.merge import merge
from ssa_tf.nn import SVDConv2D, SVDDense, SVDLayer, energy_rank

__all__ = ["UnsupportedLayerError", "format_records", "merge", "to_ssa"]


def to_ssa(model, rank=None, energy=None, exempt=(), feedback_init="random", seed=1):
    """Return (SVD-form copy of ``model``, list of LayerRecord).

    ``rank`` caps every layer's rank; ``energy`` (tau in (0, 1]) cuts each
    layer to the smallest rank keeping that fraction of its energy (docs/ALGORITHM.md
    §5); layers named in ``exempt`` keep full rank. The original model
    is not modified. Feedback factors are drawn as the project's models draw
    them (Glorot for dense, He for convolutions) with seeds derived from
    ``seed``, or are the layer's own SVD with ``feedback_init="forward"``.
    """
    if rank is not None and energy is not None:
        raise ValueError("give rank or energy, not both")
    if rank is not None and int(rank) < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    converter = _ToSSA(rank, energy, set(exempt), feedback_init, seed)
    from ssa_tf.training.model import SSAModel  # the trainer imports this package's layers

    if isinstance(model, SSAModel):
        return converter.ssa_model(model), converter.records
    return rewrite(model, converter.handle), converter.records


class _ToSSA:
    def __init__(self, rank, energy, exempt, feedback_init, seed):
        self.rank, self.energy, self.exempt = rank, energy, exempt
        self.feedback_init, self.seed = feedback_init, int(seed)
        self.records = []
        self._count = 0

    # -- one layer ------------------------------------------------------------
    def svd_layer(self, layer):
        """The SVD layer computing what plain ``layer`` computes, cut as this converter says."""
        self._count += 1
        feedback_seed = self.seed * 10007 + self._count + 5003
        linear = linear_copy(layer)
        kwargs = dict(feedback_seed=feedback_seed, feedback_init=self.feedback_init)
        if isinstance(layer, keras.layers.Dense):
            init = keras.initializers.GlorotUniform(feedback_seed)
            new = SVDDense.from_dense(linear, kernel_initializer=init, **kwargs)
        else:
            init = keras.initializers.HeNormal(feedback_seed)
            new = SVDConv2D.from_conv(linear, kernel_initializer=init, **kwargs)
        full = new.full_rank
        target, kept = full, 1.0
        if layer.name not in self.exempt:
            if self.rank is not None:
                target = min(int(self.rank), full)
            elif self.energy is not None:
                target = energy_rank(new.spectrum(), self.energy)
        if target < full:
            kept = new.truncate(target)["energy"]
        record = layer_record(new, "svd", energy=kept)
        if activation_name(layer) != "linear":
            record.note = f"activation {activation_name(layer)} split into its own layer"
        self.records.append(record)
        return new

    # -- graph models -----------------------------------------------------------
    def handle(self, layer, args, kwargs):
        if isinstance(layer, keras.Model):
            return rewrite(layer, self.handle)(*args, **kwargs)
        reason = _unconvertible(layer)
        if reason is None:
            new = self.svd_layer(layer)
            y = new(*args)
            if activation_name(layer) != "linear":
                y = keras.layers.Activation(layer.activation, name=f"{layer.name}_activation")(y)
            return y
        if isinstance(layer, PLAIN_WEIGHT_TYPES):
            self.records.append(layer_record(layer, "kept", note=reason))
        return clone_call(layer, args, kwargs)

    # -- SSAModel ---------------------------------------------------------------
    def ssa_model(self, model):
        """The same architecture under rule ``ssa``, its weights taken from ``model``."""
        from ssa_tf.training.model import SSAModel

        if model.rule.svd:
            raise ValueError(f"{model.name} is already in SVD form (rule {model.rule_name!r})")
        source = {l.name: l for l in all_layers(model)}
        plain = [l for l in source.values() if isinstance(l, (keras.layers.Dense,
                                                              keras.layers.Conv2D))]
        # ranks first: the target builds its feedback from factors of these shapes
        made = {l.name: self.svd_layer(l) for l in plain}
        # the rule's options that SSA takes too (a DFA source's route, say)
        from ssa_tf.methods import registry

        ssa = registry.get(registry.DEFAULT)
        options = {k: v for k, v in model.options.items() if k in ssa.options}
        config = {k: v for k, v in model.get_config().items() if k not in model.options}
        config.update(options, rule=ssa.name, ranks={name: new.rank for name, new in made.items()})
        target = SSAModel.from_config(config)
        for layer in all_layers(target):
            if isinstance(layer, SVDLayer):
                new = made[layer.name]
                # forward factors and bias from the trained weight; the target
                # keeps the feedback factors its own (seeded) factory drew
                for dst, src in zip(layer.factor_variables()[:3], new.factor_variables()[:3]):
                    dst.assign(src)
                if layer.bias is not None:
                    layer.bias.assign(new.bias)
            elif layer.weights and is_leaf(layer) and layer.name in source:
                layer.set_weights(source[layer.name].get_weights())  # norms
        return target


def _unconvertible(layer):
    """Why ``layer`` stays as it is under to_ssa, or None if it converts."""
    if type(layer) not in PLAIN_WEIGHT_TYPES:
        if isinstance(layer, PLAIN_WEIGHT_TYPES):
            return "a subclass of Dense/Conv2D, whose call may differ"
        return "not a Dense or Conv2D layer"
    if getattr(layer, "quantization_mode", None):
        return f"quantized ({layer.quantization_mode})"
    if isinstance(layer, keras.layers.Conv2D):
        if tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
            return "dilated or grouped convolution"
        if layer.data_format != "channels_last":
            return "channels_first convolution"
    return None
