"""Every model builds under every rule; parameter counts are pinned exactly."""

import numpy as np
import pytest

from ssa_tf.methods import registry
from ssa_tf.training.model import SSAModel

# trainable parameters at full rank. BP and DFA share the plain architecture;
# SSA at full rank stores U, s, V, which for a square matrix is about twice
# the dense count (rank cuts bring it down).
EXPECTED = {
    ("mlp", (28, 28, 1), 10): {"ssa": 402040, "dfa": 270346, "bp": 270346, "modules": 3},
    ("smallconv", (32, 32, 3), 10): {"ssa": 671506, "dfa": 362282, "bp": 362282, "modules": 5},
    ("resnet32", (32, 32, 3), 10): {"ssa": 920930, "dfa": 466906, "bp": 466906, "modules": 16},
}


def trainable(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


@pytest.mark.parametrize("key", list(EXPECTED))
@pytest.mark.parametrize("rule", ["ssa", "dfa", "bp"])
def test_parameter_counts(key, rule):
    arch, shape, classes = key
    model = SSAModel(arch, shape, classes, rule=rule)
    assert trainable(model) == EXPECTED[key][rule]
    assert len(model.local_modules) == EXPECTED[key]["modules"]
    out = model(np.zeros((2, *shape), np.float32))
    assert tuple(out.shape) == (2, classes)


@pytest.mark.parametrize("rule", registry.NAMES)
def test_every_rule_builds_its_parametrization(rule):
    # every rule of the registry builds one of the two networks, SVD layers (its spec's
    # svd) or ordinary ones, and trains its feedback matrices too when its card says the
    # feedback learns (dkp), never when it says they are fixed
    key = ("mlp", (28, 28, 1), 10)
    spec = registry.get(rule)
    model = SSAModel(*key, rule=rule)
    learns = spec.card({}).feedback == "learns locally"
    matrices = list(getattr(getattr(model.rule, "route", None), "matrices", ()))
    trained = {id(v) for v in model.trainable_variables}
    assert [id(m) in trained for m in matrices] == [learns] * len(matrices)
    assert matrices or not learns
    feedback = sum(int(np.prod(m.shape)) for m in matrices) if learns else 0
    assert trainable(model) == EXPECTED[key]["ssa" if spec.svd else "bp"] + feedback
    assert len(model.local_modules) == EXPECTED[key]["modules"]


def test_resnet18_matches_the_standard_count():
    # 11,689,512 is the canonical ImageNet ResNet-18 (torchvision's count)
    model = SSAModel("resnet18", (224, 224, 3), 1000, rule="bp", norm="batch")
    assert trainable(model) == 11689512
    assert len(model.local_modules) == 9


def test_models_accept_other_shapes_and_classes():
    model = SSAModel("resnet32", (24, 20, 1), 7, rule="ssa")
    assert tuple(model(np.zeros((3, 24, 20, 1), np.float32)).shape) == (3, 7)
    model = SSAModel("smallconv", (8, 8, 1), 4, rule="dfa", norm="batch")
    assert tuple(model(np.zeros((3, 8, 8, 1), np.float32)).shape) == (3, 4)


def test_feedback_matrices_shapes():
    model = SSAModel("smallconv", (32, 32, 3), 10, rule="ssa", feedback="global",
                     feedback_spatial="full")
    shapes = [tuple(v.shape) for v in model.rule.route.matrices]
    # conv maps 16x16x32, 8x8x64, 2x2x128 sent to every unit; fc512 plain
    assert shapes == [(16 * 16 * 32, 10), (8 * 8 * 64, 10), (2 * 2 * 128, 10), (512, 10)]
    model = SSAModel("smallconv", (32, 32, 3), 10, rule="ssa", feedback="local")
    assert [tuple(v.shape) for v in model.rule.route.matrices] == [
        (4 * 32, 10), (4 * 64, 10), (4 * 128, 10), (512, 10)]
