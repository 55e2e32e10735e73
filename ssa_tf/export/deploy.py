"""Deployment formats: SavedModel and ONNX of a merged SSA model, verified and timed.

``export_run`` is what ``python export/to_onnx.py`` does: load a training
run's final model, merge it into plain Keras layers (``ssa_tf.convert``),
convert to ONNX with tf2onnx (``from_function`` with an explicit input
signature and a dynamic batch dimension; tf2onnx's ``from_keras`` does not
handle Keras 3 models), check onnxruntime against the original SSA model on
evaluation data, and only then write the files. It also exports the same
architecture with every layer merged (the "dense" export) to compare
parameters, file size and latency.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from ssa_tf.errors import ParityError  # noqa: F401  (raised here)
import ssa_tf.training.model  # noqa: F401  registers SSAModel and its layers for load_model
from ssa_tf import atomic_files
from ssa_tf.config import legacy
from ssa_tf.export import convert
from ssa_tf import data as data_lib
from ssa_tf.export.config import ExportConfig, UsageError
from ssa_tf.export.onnx_runtime import (  # noqa: F401  (deploy's names since its start)
    fastest_merge, latency_ms, median_latency_ms, norms_folded, onnx_form_timer, onnx_session,
    run_onnx, to_onnx)
from ssa_tf.nn.user import input_preprocessing
from ssa_tf.training import saved

# docs/ALGORITHM.md §7: the export changes the logits by float32 rounding only
LOGIT_ATOL = 1e-4


# --------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------

def export_saved_model(model: keras.Model, path: str):
    """SavedModel with a ``serve`` endpoint (dynamic batch) at ``path``, written atomically."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=".saved_model_", dir=parent)
    try:
        target = os.path.join(tmp, "model")
        model.export(target, format="tf_saved_model", verbose=False)
        if os.path.isdir(path):  # an empty folder the user made for it
            os.rmdir(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_saved_model(path: str, x) -> np.ndarray:
    loaded = tf.saved_model.load(path)
    return np.asarray(loaded.serve(tf.constant(x, tf.float32)))


# --------------------------------------------------------------------------
# Checks and measurements
# --------------------------------------------------------------------------

def compare_logits(reference, candidate, what) -> dict:
    """Max |difference| and top-1 disagreements; ParityError past LOGIT_ATOL or on any flip."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ParityError(f"{what}: logits of shape {candidate.shape}, expected {reference.shape}")
    diff = float(np.max(np.abs(reference - candidate)))
    flips = int(np.sum(reference.argmax(-1) != candidate.argmax(-1)))
    if not diff <= LOGIT_ATOL or flips:
        raise ParityError(f"{what} differs from the SSA model: max |logit difference| {diff:.3g} "
                          f"(limit {LOGIT_ATOL:g}), {flips} of {len(reference)} top-1 predictions "
                          "differ; nothing was written")
    return {"max_abs_diff": diff, "top1_differ": flips, "examples": int(len(reference))}


def count_params(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))


# --------------------------------------------------------------------------
# One deployment of a training run
# --------------------------------------------------------------------------

@dataclasses.dataclass
class ExportResult:
    records: list
    form: str
    opset: int
    params: int
    dense_params: int
    onnx_bytes: int
    dense_onnx_bytes: int
    latency_ms: dict  # {(model, batch): ms}, model "export" or "dense"
    onnx_check: dict
    saved_model_check: dict | None
    dataset_split: str
    output: str
    saved_model: str | None
    input_spec: dict  # what the exported model takes (also in the ONNX metadata)
    norms_folded: str | None = None  # "4 of 4": layer norms whose mean went into a weight layer
    rule: str = "ssa"  # the rule that trained the model (what the checks compare against)


def load_run_model(path: str) -> keras.Model:
    """A run's model.keras; UsageError (one line) when it cannot be read."""
    try:
        return saved.load(path, compile=False)  # a model of the old layout too
    except Exception as e:  # any failure to read the user's file is their input problem
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"cannot load model {path!r} ({type(e).__name__}: {detail[:200]})") from e


_LOAD_FIXED = ("name", "batch_size", "augment", "max_train_examples", "validation_split")
_DATA = "data."


def evaluation_batch(cfg: ExportConfig, input_shape):
    """(x, split, dataset) from the test split of the dataset in the run's config.json."""
    try:
        with open(cfg.config_path) as f:
            run_config = legacy.read_settings(json.load(f))
        dataset = run_config["data.dataset"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"cannot read the dataset name from {cfg.config_path!r} ({e})") from e
    # the run's own dataset settings (data_dir, label, image size, ...), as far
    # as this version of data.load takes them
    accepted = inspect.signature(data_lib.load).parameters
    data = {k[len(_DATA):]: v for k, v in run_config.items() if k.startswith(_DATA)}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
               if k in accepted and k not in _LOAD_FIXED and v is not None}
    options.setdefault("seed", run_config.get("seed", 1))  # synthetic data: the run's own
    try:
        ds = data_lib.load(dataset, cfg.verify_batch, augment=False, max_train_examples=1,
                           **options)
    except data_lib.DataError as e:
        raise UsageError(f"cannot load evaluation data for the check: {e}") from e
    x, _ = next(iter(ds.test))
    x = np.asarray(x, np.float32)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise UsageError(f"dataset {dataset!r} has inputs {tuple(x.shape[1:])}, the model expects "
                         f"{tuple(input_shape)}")
    return x, ds.test_split, dataset


def input_spec(dataset, input_shape, form):
    """What the exported model takes, for the report and the ONNX metadata, and the
    (mean, std) folded into it (None: it takes the normalized tensors)."""
    stats = data_lib.input_normalization(dataset) if form == "raw" else None
    shape = f"(batch, {', '.join(map(str, input_shape))})"
    if stats is None:
        what = ("the training pipeline's normalized tensors" if form == "normalized"
                else "standard-normal tensors (synthetic data)")
        return {"shape": shape, "dtype": "float32", "values": what}, None
    return raw_pixels_spec(dataset, input_shape, stats, "folded in"), stats


def raw_pixels_spec(dataset, input_shape, stats, where):
    """What an export that takes raw pixels takes; ``where`` the normalization is
    (``stats`` None: ``where`` says all of it, a model's own preprocessing)."""
    resize = (f", resized and center-cropped to {input_shape[0]}x{input_shape[1]}"
              if dataset == "imagenet2012" else "")
    if stats is None:
        normalization = where
    else:
        mean, std = stats
        normalization = f"{where}: (x - {list(map(float, mean))}) / {list(map(float, std))}"
    return {"shape": f"(batch, {', '.join(map(str, input_shape))})", "dtype": "float32",
            "layout": "channels last (NHWC)", "values": f"raw pixels in [0, 255]{resize}",
            "normalization": normalization}


def with_input_normalization(model, stats):
    """``model`` behind a fixed per-channel (x - mean) / std, or ``model`` itself."""
    if stats is None:
        return model
    from ssa_tf.export.merge import input_rescaling

    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="pixels")
    return keras.Model(inputs, model(input_rescaling(stats)(inputs)),
                       name=f"{model.name}_raw_pixels")


def export_run(cfg: ExportConfig, log=print) -> ExportResult:
    """Merge, convert, verify and time a run's model; write files only if it all holds.

    Raises UsageError (the user's input) or ParityError (the export is wrong).
    """
    log(f"loading {cfg.model_path}")
    model = load_run_model(cfg.model_path)
    try:
        if cfg.form == "measured":
            merged, records, chosen, times = fastest_merge(model)
            batches = sorted(times[chosen])
            log("form measured: " + ", ".join(
                f"{name} {' / '.join(f'{t[b]:.1f}' for b in batches)} ms"
                for name, t in times.items())
                + f" (batches {' / '.join(map(str, batches))}): {chosen}")
        else:
            merged, records = convert.merge(model, cfg.form)
        dense, _ = convert.merge(model, "merged")
    except convert.UnsupportedLayerError as e:
        raise UsageError(str(e)) from e
    input_shape = tuple(merged.inputs[0].shape[1:])
    x, split, dataset = evaluation_batch(cfg, input_shape)  # what the pipelines give: raw pixels
    own = getattr(model, "input_stats", None)
    if own is not None:
        # the model normalizes its own input, and so does its merge: raw pixels in all through
        if cfg.input != "raw":
            raise UsageError(f"{cfg.model_path} takes raw pixels and normalizes them itself; "
                             f"--input={cfg.input} applies only to models saved before that "
                             f"(their config has no input_stats)")
        reference = np.asarray(model(x, training=False))
        spec = raw_pixels_spec(dataset, input_shape, own, "inside the model (as in model.keras)")
    elif input_preprocessing(model):
        # a user's model whose first layers preprocess the raw pixels; its merge
        # keeps them (a Normalization as the Rescaling computing the same)
        if cfg.input != "raw":
            raise UsageError(f"{cfg.model_path} takes raw pixels and preprocesses them with "
                             f"its own first layers; --input={cfg.input} applies only to "
                             "models saved before the input contract")
        reference = np.asarray(model(x, training=False))
        spec = raw_pixels_spec(dataset, input_shape, None,
                               model.input_description()["normalization"])
    else:  # saved before the input contract: it takes normalized tensors
        data_stats = data_lib.input_normalization(dataset)
        normalized = x if data_stats is None else (
            (x - np.asarray(data_stats[0], np.float32)) / np.asarray(data_stats[1], np.float32))
        reference = np.asarray(model(normalized, training=False))
        spec, stats = input_spec(dataset, input_shape, cfg.input)
        if stats is not None:  # the check feeds the exports what a deployer would: raw pixels
            merged, dense = with_input_normalization(merged, stats), with_input_normalization(
                dense, stats)
        else:
            x = normalized
    log(f"input: {spec['values']}, {spec['shape']} {spec['dtype']}")

    log(f"converting to ONNX (opset {cfg.opset}, form {cfg.form})")
    onnx_model = to_onnx(merged, cfg.opset, cfg.fold_norms)
    for key, value in {**spec, "dataset": dataset, "classes": str(reference.shape[-1])}.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = f"ssa_tf.input.{key}" if key not in ("dataset", "classes") \
            else f"ssa_tf.{key}", str(value)
    proto = onnx_model.SerializeToString()
    session = onnx_session(proto)
    onnx_check = compare_logits(reference, run_onnx(session, x), "the ONNX model")
    same_form = all(r.form == "merged" for r in records)
    dense_proto = proto if same_form else to_onnx(dense, cfg.opset,
                                                  cfg.fold_norms).SerializeToString()
    dense_session = session if same_form else onnx_session(dense_proto)
    # the dense export is a reference point, but a wrong one would mislead
    compare_logits(reference, run_onnx(dense_session, x), "the dense ONNX model")

    saved_check = None
    staged = None
    if cfg.saved_model:
        log(f"exporting SavedModel to {cfg.saved_model}")
        parent = os.path.dirname(os.path.abspath(cfg.saved_model))
        staged = tempfile.mkdtemp(prefix=".saved_model_check_", dir=parent)
    try:
        if staged:
            target = os.path.join(staged, "model")
            export_saved_model(merged, target)
            saved_check = compare_logits(reference, run_saved_model(target, x), "the SavedModel")

        log(f"timing onnxruntime ({cfg.latency_runs} runs per batch size)")
        latency = {}
        for batch in (1, 64):
            xb = np.resize(x, (batch, *input_shape)).astype(np.float32)
            sessions = {"export": session} if same_form else {"export": session,
                                                              "dense": dense_session}
            ms = median_latency_ms(sessions, xb, cfg.latency_runs)
            latency[("export", batch)] = ms["export"]
            latency[("dense", batch)] = ms.get("dense", ms["export"])

        # everything holds: only now do files appear
        atomic_files.write_bytes(cfg.output, proto)
        if staged:
            if os.path.isdir(cfg.saved_model):
                os.rmdir(cfg.saved_model)  # validated empty
            os.replace(os.path.join(staged, "model"), cfg.saved_model)
    finally:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
    return ExportResult(records, cfg.form, cfg.opset, count_params(merged), count_params(dense),
                        len(proto), len(dense_proto), latency, onnx_check, saved_check, split,
                        cfg.output, cfg.saved_model, spec, norms_folded(onnx_model),
                        getattr(model, "rule_name", "ssa"))


def format_result(result: ExportResult) -> str:
    """The per-layer table and the export-versus-dense comparison, as printed by the script."""
    lines = [convert.format_records(result.records), ""]
    lat = result.latency_ms
    rows = [("", "parameters", "ONNX bytes", "ms batch 1", "ms batch 64"),
            (f"export ({result.form})", f"{result.params:,}", f"{result.onnx_bytes:,}",
             f"{lat[('export', 1)]:.3f}", f"{lat[('export', 64)]:.3f}"),
            ("dense (all merged)", f"{result.dense_params:,}", f"{result.dense_onnx_bytes:,}",
             f"{lat[('dense', 1)]:.3f}", f"{lat[('dense', 64)]:.3f}")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    check = result.onnx_check
    spec = result.input_spec
    lines += ["", f"input: {spec['values']}, {spec['shape']} {spec['dtype']}"
              + (f", {spec['layout']}; normalization {spec['normalization']}"
                 if "normalization" in spec else "") + " (also in the ONNX metadata)"]
    lines += [f"onnxruntime vs the trained model ({result.rule}) on {check['examples']} "
              f"examples of {result.dataset_split}: max |logit difference| {check['max_abs_diff']:.2e}, "
              f"top-1 identical (opset {result.opset})"]
    if result.norms_folded is not None:
        lines.append(f"layer norms with their mean folded into the weight layer before them: "
                     f"{result.norms_folded}")
    if result.saved_model_check:
        s = result.saved_model_check
        lines.append(f"SavedModel vs the trained model ({result.rule}): max |logit difference| "
                     f"{s['max_abs_diff']:.2e}")
    lines.append(f"wrote {result.output}" + (f" and {result.saved_model}" if result.saved_model
                                              else ""))
    return "\n".join(lines)
