"""An architecture rebuilt at given ranks and exported as ``export/to_onnx.py`` does.

Size, multiply-adds and onnxruntime latency of an export depend on the
architecture, the ranks and the forms only, not on the weights, so the
benchmarks time rebuilt models (untrained, a glorot head) instead of needing
the trained ones on disk. Shared by ``export_frontier`` and ``norm_fold``.
"""

from __future__ import annotations

# CIFAR-10's per-channel pixel statistics: the export's input normalization, one
# Rescaling op whatever the values
PIXEL_STATS = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
CIFAR_SHAPE, CIFAR_CLASSES = (32, 32, 3), 10


def model_at_ranks(architecture, rule, ranks, seed=1, **options):
    """An SSAModel for CIFAR-10 with each named SVD layer truncated to its rank."""
    import keras

    from ssa_tf.training.model import SSAModel

    keras.utils.set_random_seed(int(seed))
    model = SSAModel(architecture, CIFAR_SHAPE, CIFAR_CLASSES, rule=rule, head_init="glorot",
                     seed=int(seed), **options)
    layers = {layer.name: layer for layer in model.svd_layers()}
    unknown = sorted(set(ranks) - set(layers))
    if unknown:
        raise ValueError(f"ranks given for layers {architecture} does not have: {unknown}")
    for name, rank in ranks.items():
        if rank < layers[name].rank:
            layers[name].truncate(int(rank))
    return model


def export_onnx(model, fold_norms=True):
    """(ONNX ModelProto, merge records, parameters) of ``model``: merged (form auto),
    raw pixels in, converted by ``ssa_tf.export.deploy.to_onnx``."""
    from ssa_tf.export import convert
    from ssa_tf.export.deploy import count_params, to_onnx, with_input_normalization

    merged, records = convert.merge(model, "auto")
    proto = to_onnx(with_input_normalization(merged, PIXEL_STATS), fold_norms=fold_norms)
    return proto, records, count_params(merged)
