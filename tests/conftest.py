"""Shared test settings: Keras must not write into the user's home."""

import os
import tempfile

os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "ssa_tf_test_keras_home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the prepared real CIFAR-10 (../shared/tfds beside the clone); absent in a user's clone
TFDS_DIR = os.environ.get("SSA_TF_TFDS_DIR", os.path.join(REPO, "..", "shared", "tfds"))


def cifar10_available():
    return os.path.isdir(os.path.join(TFDS_DIR, "cifar10"))
