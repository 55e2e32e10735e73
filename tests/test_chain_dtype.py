"""``rule.chain_dtype=bfloat16``: the ungated chain's linear network in bfloat16.

What it must be: the float32 chain's signals to bfloat16's precision, from convolutions
that really run in bfloat16 (else it buys nothing), on every path the chain takes (the
transpose, the cached matrices); the forward pass, the modules' gradients and the weights
stay float32; the setting is refused where it cannot do what it says; the card says it;
a whole run trains what the float32 run trains, to that precision.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_runs_agree, short_run
from ssa_tf.config import RunConfig, UsageError
from ssa_tf.config.validate import validate
from ssa_tf.methods import registry, routes
from ssa_tf.training.model import SSAModel

CASES = {
    "resnet18, spatial view": dict(name="resnet18", shape=(32, 32, 3), rule="ssa"),
    "resnet18, channel view": dict(name="resnet18", shape=(32, 32, 3), rule="ssa",
                                   conv_factorization="channel"),
    "smallconv, plain layers (dfa)": dict(name="smallconv", shape=(16, 16, 3), rule="dfa",
                                          feedback="chain"),
    "mlp": dict(name="mlp", shape=(5, 5, 1), rule="ssa"),
}


def _signals(model, e, dtype, cached=False):
    route = model.rule.route
    outs = [tf.zeros((4, *s)) for s in model.module_output_shapes]
    route.dtype = dtype
    step = tf.function(lambda e: list(route.signals(model, outs, e)))
    graph = step.get_concrete_function(e).graph
    kinds = {(op.type, op.get_attr("T").name) for op in graph.get_operations()
             if op.type in ("Conv2DBackpropInput", "MatMul", "BatchMatMulV2")}
    return [s.numpy() for s in step(e)], kinds


@pytest.mark.parametrize("case", CASES)
def test_the_bfloat16_chain_gives_the_float32_signals_to_its_precision(case):
    keras.utils.set_random_seed(3)
    kw = dict(CASES[case])
    model = SSAModel(kw.pop("name"), kw.pop("shape"), 10, **kw)
    model.rule.route.matrices = []  # the transpose, as at ImageNet size
    e = tf.random.normal((4, 10))
    full, full_ops = _signals(model, e, "float32")
    low, low_ops = _signals(model, e, "bfloat16")
    assert all(t == "float32" for _, t in full_ops)
    if case.startswith(("resnet", "smallconv")):  # every transposed convolution in bf16
        assert {t for op, t in low_ops if op == "Conv2DBackpropInput"} == {"bfloat16"}
    # every product too: the dense layers' and the SVD convolutions' kernel merges
    assert {t for op, t in low_ops if op != "Conv2DBackpropInput"} == {"bfloat16"}
    for f, lo in zip(full, low):
        assert lo.dtype == np.float32 and lo.shape == f.shape
        cos = float((f * lo).sum() / np.linalg.norm(f) / np.linalg.norm(lo))
        err = float(np.abs(f - lo).max() / np.abs(f).max())
        assert cos > 0.999 and err < 0.05
        assert err > 1e-5  # computed in bfloat16, not float32 relabelled


def test_the_cached_chain_multiplies_in_bfloat16():
    keras.utils.set_random_seed(3)
    model = SSAModel("smallconv", (8, 8, 3), 10, rule="ssa")
    assert model.rule.route.matrices  # small enough to cache
    e = tf.random.normal((4, 10))
    full, _ = _signals(model, e, "float32")
    low, _ = _signals(model, e, "bfloat16")
    for f, lo in zip(full, low):
        cos = float((f * lo).sum() / np.linalg.norm(f) / np.linalg.norm(lo))
        assert cos > 0.999 and 1e-5 < float(np.abs(f - lo).max() / np.abs(f).max()) < 0.05


@pytest.mark.parametrize("sets,message", [
    (["rule.chain_dtype=float16"],
     "rule.chain_dtype='float16' is not valid; choose from: float32, bfloat16"),
    (["rule.feedback=global", "rule.chain_dtype=bfloat16"],
     "rule.chain_dtype applies to the chain route only, not rule.feedback=global"),
    (["rule.name=fa", "rule.chain_dtype=bfloat16"], "rule.chain_dtype does not apply to "
     "--rule=fa"),
    (["rule.name=ssa-dkp", "rule.chain_dtype=bfloat16"], "rule.chain_dtype does not apply "
     "to --rule=ssa-dkp"),
])
def test_the_setting_is_refused_where_it_cannot_do_what_it_says(sets, message):
    assert message in validate(RunConfig().with_overrides(sets))


def test_a_chain_that_cannot_run_by_its_transpose_is_refused_at_build(monkeypatch):
    monkeypatch.setattr(routes, "MAX_FULL_MAP_ENTRIES", 0)
    monkeypatch.setattr(routes.ChainRoute, "transpose", False)  # the tape's path only
    with pytest.raises(UsageError, match="rule.chain_dtype=bfloat16 computes the chain"):
        SSAModel("smallconv", (8, 8, 3), 10, rule="ssa", chain_dtype="bfloat16")
    SSAModel("smallconv", (8, 8, 3), 10, rule="ssa")  # float32 runs the tape


def test_the_card_says_the_chain_runs_in_bfloat16():
    spec = registry.get("ssa")
    assert spec.card({}).error.endswith("(a fixed matrix)")
    assert spec.card({"chain_dtype": "bfloat16"}).error.endswith(
        "(a fixed matrix, computed in bfloat16)")
    low, full = spec.card({"chain_dtype": "bfloat16"}), spec.card({})
    assert (low.sequential, low.weight_transport, low.held_activations, low.feedback) == (
        full.sequential, full.weight_transport, full.held_activations, full.feedback)


def test_a_run_with_the_chain_in_bfloat16_trains_what_float32_trains(tmp_path, monkeypatch):
    """Through the real entry, the chain uncached (as at ImageNet size): the weights and
    the logged losses of 3 epochs within bfloat16's precision of the float32 run's, and
    not the same run."""
    monkeypatch.setattr(routes, "MAX_FULL_MAP_ENTRIES", 0)
    full = short_run(tmp_path / "f32")
    low = short_run(tmp_path / "bf16", "rule.chain_dtype=bfloat16")
    record = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert record["rule.chain_dtype"] == "bfloat16"
    assert "computed in bfloat16" in record["card"]["error"]
    assert_runs_agree(full, low, moved_at_most=0.02, rtol=0.02)  # (moved 0.005 when written)


def test_a_cpu_without_bfloat16_arithmetic_gets_a_notice(tmp_path):
    from ssa_tf.training import strategies

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # make_strategy's, one device named
    plain, fast = tmp_path / "plain", tmp_path / "fast"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    fast.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert strategies.cpu_has_bfloat16(plain) is False
    assert strategies.cpu_has_bfloat16(fast) is True
    assert strategies.cpu_has_bfloat16(tmp_path / "none") is None
    keras.utils.set_random_seed(1)
    low = SSAModel("mlp", (5, 5, 1), 10, rule="ssa", chain_dtype="bfloat16")
    full = SSAModel("mlp", (5, 5, 1), 10, rule="ssa")
    said = []
    strategies.notice_slow_bfloat16(low, strategy, said.append, cpuinfo=plain)
    assert len(said) == 1 and said[0].startswith("notice: rule.chain_dtype=bfloat16 on a CPU")
    for model, info in ((low, fast), (full, plain), (low, tmp_path / "none")):
        strategies.notice_slow_bfloat16(model, strategy, said.append, cpuinfo=info)
    assert len(said) == 1
    # the default strategy (a run on one device: make_strategy("auto")) has no device list
    default = tf.distribute.get_strategy()
    strategies.notice_slow_bfloat16(low, default, said.append, cpuinfo=plain)
    assert len(said) == (1 if tf.config.list_logical_devices("GPU") else 2)


def test_a_gpu_older_than_ampere_gets_a_notice(monkeypatch):
    from ssa_tf.training import strategies

    gpus = [tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
    details = {"compute_capability": (7, 5)}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: details)

    class OnAGpu:  # a strategy's device list, as MirroredStrategy on one GPU gives it
        class extended:
            worker_devices = ("/job:localhost/replica:0/task:0/device:GPU:0",)

    keras.utils.set_random_seed(1)
    low = SSAModel("mlp", (5, 5, 1), 10, rule="ssa", chain_dtype="bfloat16")
    said = []
    strategies.notice_slow_bfloat16(low, OnAGpu, said.append)
    assert said == ["notice: rule.chain_dtype=bfloat16 on GPUs without bfloat16 arithmetic "
                    "(/physical_device:GPU:0 (compute capability 7.5)): it will likely run "
                    "slower than in float32"]
    details["compute_capability"] = (8, 0)  # Ampere: nothing to say
    strategies.notice_slow_bfloat16(low, OnAGpu, said.append)
    assert len(said) == 1
