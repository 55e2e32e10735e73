"""ssa-tf: SSA (SVD-Space Alignment) and its baselines for TensorFlow/Keras 3.

    import ssa_tf
    model = ssa_tf.load_model("runs/RUN/model.keras")   # a run's model, ready to use

The package is laid out by part: ``nn`` (SVD layers, model builders),
``methods`` (the learning rules, one file each, and their locality cards),
``training`` (the model, the loop, checkpoints, strategies, rank cuts), ``data``,
``export``, ``tuning``, ``config`` (typed settings), ``preflight`` (a run's checks and
its workdir) and ``errors``.

Importing ``ssa_tf`` does nothing else: TensorFlow starts when a module that needs it
is imported (``ssa_tf.training.model`` registers the Keras classes), so the command
lines check their flags in a fraction of a second.
"""

__version__ = "0.2.0"


def load_model(path, **kwargs):
    """``keras.models.load_model`` with ssa-tf's model and layers registered."""
    import keras

    import ssa_tf.training.model  # noqa: F401  (registers SSAModel and the SVD layers)

    return keras.models.load_model(path, **kwargs)
