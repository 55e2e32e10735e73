"""ssa-tf: SSA (SVD-Space Alignment) and its baselines for TensorFlow/Keras 3.

    import ssa_tf, keras
    model = keras.models.load_model("runs/RUN/model.keras")   # the layers are registered

The package is laid out by part: ``nn`` (SVD layers, model builders),
``methods`` (the learning rules and their locality cards), ``training`` (the
model, the loop, checkpoints, strategies, rank cuts), ``data``, ``export``,
``tuning`` and ``config`` (typed settings, no TensorFlow).

Importing ``ssa_tf`` registers the Keras classes (and so imports TensorFlow),
except inside the command-line tools, which check their flags first: for
``python -m ssa_tf.<tool>`` Python imports this package while ``sys.argv[0]``
is still "-m", and the scripts set ``SSA_TF_DEFER_KERAS=1`` before importing it.
"""

import os as _os
import sys as _sys

__version__ = "0.2.0"

if _sys.argv[:1] != ["-m"] and _os.environ.get("SSA_TF_DEFER_KERAS") != "1":
    try:
        import ssa_tf.training.model  # noqa: F401  (registers SSAModel and the SVD layers)
    except ModuleNotFoundError as _e:
        if _e.name != "tensorflow":
            raise
        raise ImportError("ssa-tf needs TensorFlow: pip install -e '.[cpu]' (or '.[gpu]' for "
                          "NVIDIA GPUs)") from _e
