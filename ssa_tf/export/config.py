"""Deployment options and the checks that need no TensorFlow.

``python export/to_onnx.py`` validates every flag and path here before
TensorFlow starts, so a user's mistake costs a fraction of a second, ends
with one line and exit status 2, and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile

from ssa_tf.config import DATASETS, UsageError, legacy
from ssa_tf.allowed_values import EXPORT_FORMS as FORMS
from ssa_tf.training.workdir import last_checkpoint

# what the exported model takes: raw pixels (the training normalization folded in)
# or the normalized tensors the training pipeline fed
INPUTS = ("raw", "normalized")
# tf2onnx 1.17 knows opsets up to 18; below 13 common ops (Split, Squeeze,
# ReduceSum) have older signatures it converts less reliably.
OPSETS = range(13, 19)
DEFAULT_OPSET = 17
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class ExportConfig:
    workdir: str
    output: str
    saved_model: str | None = None
    opset: int = DEFAULT_OPSET
    form: str = "auto"
    latency_runs: int = 50  # timed runs per (model, batch) for the median latency
    verify_batch: int = 64  # evaluation examples compared between SSA and ONNX
    input: str = "raw"
    fold_norms: bool = True  # onnx_norms: each layer norm's mean folded into its weight layer

    @property
    def model_path(self):
        return os.path.join(self.workdir, MODEL_FILE)

    @property
    def config_path(self):
        return os.path.join(self.workdir, CONFIG_FILE)


def validate(cfg: ExportConfig) -> str | None:
    """The first problem with ``cfg`` as one line, or None. Touches nothing."""
    if not cfg.workdir:
        return "--workdir is required: the folder of a training run (it holds model.keras)"
    if not cfg.output:
        return "--output is required: where to write the ONNX model, e.g. --output=model.onnx"
    if cfg.form not in FORMS:
        return f"--form={cfg.form!r} is not valid; choose from: {', '.join(FORMS)}"
    if cfg.input not in INPUTS:
        return f"--input={cfg.input!r} is not valid; choose from: {', '.join(INPUTS)}"
    if cfg.opset not in OPSETS:
        return (f"--opset must be in {OPSETS.start}..{OPSETS.stop - 1} (tf2onnx 1.17), "
                f"got {cfg.opset}")
    if cfg.latency_runs < 1:
        return f"--latency_runs must be >= 1, got {cfg.latency_runs}"
    if cfg.verify_batch < 1:
        return f"--verify_batch must be >= 1, got {cfg.verify_batch}"
    if not os.path.isdir(cfg.workdir):
        return f"--workdir {cfg.workdir!r} is not a folder"
    if not os.path.isfile(cfg.model_path):
        where = last_checkpoint(cfg.workdir)
        if where is not None:
            return (f"the run in --workdir {cfg.workdir!r} is unfinished (its last checkpoint: "
                    f"{where}); run its training command again to resume and finish it, then "
                    "export")
        return (f"no model in --workdir {cfg.workdir!r} (expected {MODEL_FILE}; a finished "
                "`python -m ssa_tf.train --workdir=...` run writes it)")
    if not zipfile.is_zipfile(cfg.model_path):  # Keras would call a truncated file "not found"
        return (f"cannot load model {cfg.model_path!r}: not a .keras zip archive "
                "(corrupt or truncated?)")
    if not os.path.isfile(cfg.config_path):
        return f"no {CONFIG_FILE} in --workdir {cfg.workdir!r}: it names the evaluation dataset"
    try:
        with open(cfg.config_path) as f:
            dataset = legacy.read_settings(json.load(f))["data.dataset"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"cannot read the dataset name from {cfg.config_path!r} ({type(e).__name__}: {e})"
    if dataset not in DATASETS:
        return (f"{cfg.config_path!r} names dataset {dataset!r}, which ssa_tf cannot load "
                f"(known: {', '.join(DATASETS)})")
    problem = _output_problem(cfg.output, "--output")
    if problem:
        return problem
    if cfg.saved_model:
        if os.path.exists(cfg.saved_model) and not (os.path.isdir(cfg.saved_model)
                                                     and not os.listdir(cfg.saved_model)):
            return (f"--saved_model {cfg.saved_model!r} already exists; remove it or choose "
                    "another folder")
        problem = _output_problem(cfg.saved_model, "--saved_model")
        if problem:
            return problem
        if os.path.abspath(cfg.saved_model) == os.path.abspath(cfg.output):
            return "--saved_model and --output must be different paths"
    return None


def _output_problem(path, flag):
    """Why nothing can be written at ``path``, or None (probes with a real temporary file)."""
    if os.path.isdir(path) and flag == "--output":
        return f"{flag} {path!r} is a folder; give a file name such as model.onnx"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{flag} {path!r}: folder {parent!r} does not exist"
    # os.access says yes to root even on read-only mounts and immutable
    # folders; creating a file is the only answer that holds
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".ssa_tf_probe_"):
            pass
    except OSError as e:
        return f"{flag} {path!r}: cannot write in folder {parent!r} ({e.strerror or e})"
    return None


__all__ = ["CONFIG_FILE", "DEFAULT_OPSET", "ExportConfig", "FORMS", "MODEL_FILE", "OPSETS",
           "UsageError", "validate"]
