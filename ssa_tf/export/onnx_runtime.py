"""ONNX out of Keras, and onnxruntime: conversion, sessions, latency, and the timer that
picks an export's form per layer (``merge(form="measured")``)."""

from __future__ import annotations

import logging
import time

import keras
import numpy as np
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from ssa_tf.export.config import DEFAULT_OPSET
from ssa_tf.export.onnx_norms import fold_layer_norm_means

INPUT_NAME, OUTPUT_NAME, BATCH_DIM = "input", "logits", "batch"
NORMS_FOLDED_KEY = "ssa_tf.layer_norms_folded"


def to_onnx(model: keras.Model, opset: int = DEFAULT_OPSET, fold_norms: bool = True):
    """ONNX ModelProto of a single-input Keras model; input "input", output "logits".

    ``fold_norms``: fold each layer norm's channel mean into the weight layer
    before it (``onnx_norms``; the same function, fewer passes over the
    activations). The metadata entry ``ssa_tf.layer_norms_folded`` says how
    many of the layer norms it recognized (tf2onnx's pattern for Keras's
    layer norm with scale and centre) were folded ("4 of 4").
    """
    tf2onnx.logging.set_level(logging.ERROR)
    shape = tuple(model.inputs[0].shape[1:])
    spec = tf.TensorSpec((None, *shape), tf.float32, name=INPUT_NAME)
    fn = tf.function(lambda x: {OUTPUT_NAME: model(x, training=False)})
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=int(opset))
    for value in (*proto.graph.input, *proto.graph.output):  # tf2onnx names it unk__N
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    if fold_norms:
        folded, found = fold_layer_norm_means(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = NORMS_FOLDED_KEY, f"{folded} of {found}"
    return proto


def norms_folded(proto) -> str | None:
    """What ``to_onnx`` recorded in ``ssa_tf.layer_norms_folded`` ("3 of 4"), or None."""
    return next((e.value for e in proto.metadata_props if e.key == NORMS_FOLDED_KEY), None)


def onnx_session(model_bytes: bytes, threads: int | None = None,
                 profile_prefix: str | None = None) -> ort.InferenceSession:
    """A CPU session; ``threads`` fixes the intra-op threads (sequential execution),
    so that models timed side by side get the same resources.

    Its threads do not spin between runs: onnxruntime's default keeps a session's
    threads busy-waiting after each run, and sessions timed in turn then take the cores
    from each other. Four identical sessions (six 3x3 convolutions at 56x56, batch 8,
    2 threads) each ran in 37-46 ms spinning, the ones timed first and last fastest, and
    in 21.8-22.0 ms not (2026-12-07; the latency tables before it carry that bias)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_onnx(session, x) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(x, np.float32)})[0]


def latency_ms(sessions: dict, x, runs: int) -> dict:
    """{name: (median, p25, p75)} wall time (ms) of ``session.run`` on ``x``.

    Sessions are timed in turn, run by run, with the order reversed every
    round, so that load from other processes on a shared machine falls on all
    of them alike and none always goes first.
    """
    for session in sessions.values():  # warm-up: first runs allocate
        for _ in range(2):
            run_onnx(session, x)
    names = list(sessions)
    times = {name: [] for name in names}
    for k in range(runs):
        for name in (names if k % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            run_onnx(sessions[name], x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: tuple(float(v) for v in np.percentile(t, [50, 25, 75]))
            for name, t in times.items()}


def median_latency_ms(sessions: dict, x, runs: int) -> dict:
    """Median wall time (ms) per named session (``latency_ms``)."""
    return {name: q[0] for name, q in latency_ms(sessions, x, runs).items()}


def onnx_form_timer(batch: int = 1, runs: int = 15, threads: int | None = None):
    """A timer for ``merge(form="measured")``: both forms of a layer exported alone and
    timed in turn in onnxruntime on ``batch`` examples (median of ``runs``); the faster
    form's name (a tie: merged, one layer)."""
    rng = np.random.default_rng(0)

    def timer(merged, factored):
        x = rng.standard_normal((batch, *merged.inputs[0].shape[1:])).astype(np.float32)
        sessions = {name: onnx_session(to_onnx(m, fold_norms=False).SerializeToString(),
                                       threads)
                    for name, m in (("merged", merged), ("factored", factored))}
        ms = median_latency_ms(sessions, x, runs)
        return "factored" if ms["factored"] < ms["merged"] else "merged"

    return timer


# the whole models a measured export is checked against: per layer, the forms interact (an
# onnxruntime layout reorder between a merged and a factored neighbour, for one), and
# at resnet18/224 sizes the per-layer choices ran at 0.88-0.99x BP's time at batch 8 where
# every layer factored ran at 0.72-0.77x (benchmarks/reports/DEPLOY_LATENCY.md)
WHOLE_FORMS = ("merged", "factored")
TIE = 0.01  # whole-model scores this close are a tie (the fewer parameters win)


def fastest_merge(model, batches=(1, 8), runs=10, threads=None):
    """``merge(model, "measured")`` with the whole model checked: the per-layer choice of
    ``onnx_form_timer`` and the model in each of ``WHOLE_FORMS`` are converted and timed in
    turn in onnxruntime at ``batches`` (median of ``runs``), and the candidate whose
    geometric mean of time ratios to all-merged is least is returned (within ``TIE``: the
    one with fewer parameters).

    Returns (merged model, records, chosen candidate's name, {name: {batch: ms}})."""
    from ssa_tf.export.merge import merge

    candidates = {"per layer": merge(model, "measured",
                                     timer=onnx_form_timer(runs=runs, threads=threads))}
    for form in WHOLE_FORMS:
        candidates[form] = merge(model, form)
    # timed as the export is written (its layer norms folded)
    sessions = {name: onnx_session(to_onnx(m).SerializeToString(), threads)
                for name, (m, _) in candidates.items()}
    shape = tuple(candidates["merged"][0].inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    times = {name: {} for name in candidates}
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        for name, ms in median_latency_ms(sessions, x, runs).items():
            times[name][batch] = ms
    score = {name: float(np.exp(np.mean([np.log(t[b] / times["merged"][b]) for b in batches])))
             for name, t in times.items()}
    # within 1% of each other the times are a tie, and the smaller model is kept
    params = {name: m.count_params() for name, (m, _) in candidates.items()}
    best = min(score.values())
    chosen = min((n for n in score if score[n] <= best * (1 + TIE)), key=params.get)
    return (*candidates[chosen], chosen, times)
