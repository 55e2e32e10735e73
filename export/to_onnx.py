"""Deploy a trained SSA model: merge its SVD layers, export ONNX (and a SavedModel).

    python export/to_onnx.py --workdir=runs/RUN --output=model.onnx \
        [--saved_model=DIR] [--opset=17] [--form=auto|merged|factored|measured]

The run's final model (RUN/model.keras) is merged into plain Keras layers,
converted with tf2onnx and checked with onnxruntime against the SSA model on
a batch of the run's evaluation data (RUN/config.json names the dataset).
Files are written only if every logit agrees within 1e-4 and every top-1
prediction is the same; otherwise the exit status is 1 and nothing is left
behind. A user mistake (flag, path, unreadable model, unsupported layer,
missing dataset) ends with one line on stderr and exit status 2.

The command line is ssa_tf.export.command (installed as the ssa-export console
script too); the logic lives in ssa_tf.export (merge, deploy).
"""

import os
import sys

if __name__ == "__main__":
    # run as `python export/to_onnx.py` from a clone without installing ssa_tf
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ssa_tf.export.command import run_main

    run_main()
