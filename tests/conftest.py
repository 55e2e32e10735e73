"""Shared test settings: Keras must not write into the user's home."""

import os
import tempfile

os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "ssa_tf_test_keras_home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenBLAS's spinning threads made the SVDs of model construction 15x slower
# on a loaded 2-core machine (resnet32 at 8x8: 82 s instead of 2.7 s)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the prepared real CIFAR-10 (../shared/tfds beside the clone); absent in a user's clone
TFDS_DIR = os.environ.get("SSA_TF_TFDS_DIR", os.path.join(REPO, "..", "shared", "tfds"))


def cifar10_available():
    return os.path.isdir(os.path.join(TFDS_DIR, "cifar10"))
