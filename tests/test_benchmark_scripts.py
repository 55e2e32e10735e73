"""Benchmarks measure what they say (each run in a process of its own: their flags are
their own).

``benchmarks.cut_epoch`` charges a cut model the traces training charges it: its epoch
was once fed as arrays, the first batch traced with its size known and the short last
batch traced the step again inside the timed epoch, while BP's model, traced on the whole
epoch in round 1, never paid that again. Training's ``tf.data`` batches leave the size
unknown, so a cut costs one trace. The benchmarks' cuts to a fraction of full rank keep the
ends at full rank in the rows that say so. ``benchmarks.efficiency``'s multiply-adds once
counted SVD convolutions per output pixel: converted from plain layers, they are built for
any map size, and the count read the build shape. ``benchmarks.step_cost`` pairs each
round's times with the reference row's of the same round (``--against``)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, tmp_path):
    """The JSON that ``script`` prints last, run by Python in a process of its own."""
    env = {**os.environ, "KERAS_HOME": str(tmp_path / ".keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


CUT_EPOCH_SCRIPT = """
import json
from absl import flags
from benchmarks import cut_epoch
flags.FLAGS(["cut_epoch", "--model=smallconv", "--examples=100", "--batch=32"])
from ssa_tf import cli
cli.import_tensorflow()
traces, fits = {"bp": 0, "ssa": 0}, {"bp": [], "ssa": []}
real_build = cut_epoch.build
def build(options):
    model, name = real_build(options), options["rule"]
    step, fit = model.train_step, model.fit
    def counted(data):  # runs in Python once a trace
        traces[name] += 1
        return step(data)
    def fit_counted(*args, **kwargs):  # the traces before each fit
        fits[name].append(traces[name])
        return fit(*args, **kwargs)
    model.train_step, model.fit = counted, fit_counted
    return model
cut_epoch.build = build
from ssa_tf.training import rank
real_apply, at_cut = rank.apply_ranks, {}
def apply_ranks(model, ranks, **kwargs):
    at_cut.update(traces)
    return real_apply(model, ranks, **kwargs)
rank.apply_ranks = apply_ranks
row = __ROW__
rows = {name: options for name, options in cut_epoch.ROWS if name in ("bp", row)}
batches = cut_epoch.data()
bp = build(rows["bp"])
bp.fit(batches.take(4), verbose=0, shuffle=False)
before = dict(traces)
out = cut_epoch.one_round(rows, batches, bp, ["bp", row])
print(json.dumps(dict(before=before, at_cut=at_cut, after=traces, fits=fits["ssa"],
                      parts=out[row][1],
                      steps=int(bp.optimizer.iterations.numpy()))))
"""


def test_a_cut_epoch_traces_the_step_once_after_the_cut_and_bp_not_again(tmp_path):
    got = run_script(CUT_EPOCH_SCRIPT.replace("__ROW__", repr("ssa")), tmp_path)
    # BP's timed epoch (100 images: three batches of 32 and one of 4) reuses its trace
    assert got["after"]["bp"] == got["before"]["bp"] >= 1
    # SSA's model traces at full rank, then once after the cut, short last batch included
    assert got["at_cut"]["ssa"] >= 1
    assert got["after"]["ssa"] - got["at_cut"]["ssa"] == 1
    full_rank, first, rest = got["fits"]  # the retrace on the epoch's first step
    assert rest - first == 1 and got["after"]["ssa"] == rest
    assert got["steps"] == 4 + 4
    cut, retrace, rest = got["parts"]
    assert min(cut, retrace, rest) > 0


def test_the_no_cut_floor_row_neither_cuts_nor_traces_in_its_epoch(tmp_path):
    script = CUT_EPOCH_SCRIPT.replace("__ROW__", repr("ssa, no recompute, no cut"))
    got = run_script(script, tmp_path)
    assert got["at_cut"] == {}  # apply_ranks never ran
    # traced on its first batch before the timing, never again in the timed epoch: fits
    # on the first batch at full rank, then (timed) the first batch and the rest
    full_rank, first, rest = got["fits"]
    assert first - full_rank >= 1 and got["after"]["ssa"] == rest == first
    assert got["after"]["bp"] == got["before"]["bp"] >= 1


def test_the_cut_in_place_row_cuts_and_never_traces_after_it(tmp_path):
    got = run_script(CUT_EPOCH_SCRIPT.replace("__ROW__", repr("ssa, cut in place")), tmp_path)
    assert got["at_cut"]["ssa"] >= 1  # apply_ranks ran, after the trace at full rank
    full_rank, first, rest = got["fits"]
    assert got["after"]["ssa"] == rest == first == got["at_cut"]["ssa"]
    cut, first_step, rest = got["parts"]
    assert min(cut, first_step, rest) > 0


def test_fraction_ranks_keep_the_ends_at_full_rank_where_a_row_says(tmp_path):
    # the benchmarks' cuts to a fraction of full rank (deploy_latency, step_cost, ...)
    script = """
import json
from benchmarks.timing import fraction_ranks
from ssa_tf.training.model import build_model
model = build_model("resnet18", (32, 32, 3), 10, rule="ssa", conv_factorization="channel")
full = {l.name: l.full_rank for l in model.svd_layers()}
print(json.dumps([full, fraction_ranks(model, 0.4), fraction_ranks(model, 0.4, keep_ends=True)]))
"""
    full, every, ends_kept = run_script(script, tmp_path)
    names = list(full)
    assert every == {n: max(1, int(full[n] * 0.4)) for n in names}
    # the stem and the classifier are left out of the cut; every other layer as before
    assert set(ends_kept) == set(names[1:-1]) and len(names) > 10
    assert all(ends_kept[n] == every[n] < full[n] for n in ends_kept)


EFFICIENCY_SCRIPT = """
import json
from benchmarks import efficiency
from ssa_tf.training.model import build_model
out = {}
for rule, options in (("bp", {}), ("ssa", {}),
                      ("later", dict(rule="dfa", feedback="local", readout_head="later",
                                     readout_depth=3))):
    model = build_model("smallconv", (32, 32, 3), 10, **({"rule": rule} if not options
                                                          else options))
    out[rule] = [efficiency.training_macs(model), efficiency.head_costs(model)[1]]
print(json.dumps(out))
"""


def test_training_multiply_adds_count_every_position_of_a_map(tmp_path):
    counts = run_script(EFFICIENCY_SCRIPT, tmp_path)
    # smallconv: 3x3 convolutions 3->32 at 32x32, 32->64 at 16x16, 64->128 at 8x8, then
    # dense 512x512 and 512x10
    bp = 9 * (3 * 32 * 1024 + 32 * 64 * 256 + 64 * 128 * 64) + 512 * 512 + 512 * 10
    assert counts["bp"] == [bp, 0]
    # SSA at full rank runs each convolution merged (the same multiply-adds) and its dense
    # layers factored: r (m + n) with r = min(m, n)
    assert counts["ssa"][0] == bp - 512 * 512 - 512 * 10 + 512 * 1024 + 10 * 522
    # module 0's later-shaped head: conv 32->64 at 16x16, conv 64->128 at 8x8, dense 512 and
    # a linear read-out; module 1's: conv 64->128 at 8x8 and dense; module 2's: dense;
    # module 3's: the read-out only
    convs = 9 * 32 * 64 * 256 + 9 * 64 * 128 * 64
    assert counts["later"][1] == (convs + 512 * 512) + (9 * 64 * 128 * 64 + 512 * 512) \
        + 512 * 512 + 4 * 512 * 10


FIDELITY = """
import json
import numpy as np
from benchmarks.cut_fidelity import fidelity, orthogonality

rng = np.random.default_rng(0)
m, n, r = 12, 20, 10
U, V = rng.standard_normal((m, r)), rng.standard_normal((n, r))  # far from orthonormal
s = np.sort(rng.uniform(0.5, 2.0, r))[::-1]
X = rng.standard_normal((500, n)) * np.linspace(2.0, 0.1, n)  # inputs with a spectrum
C = X.T @ X / len(X)
drifted = fidelity(U, s, V, C, 5)
Q, _ = np.linalg.qr(U)
P, _ = np.linalg.qr(V)
orthonormal = fidelity(Q, s, P, C, 5)
print(json.dumps({"drifted": drifted, "orthonormal": orthonormal,
                  "orth": [orthogonality(U), orthogonality(Q)]}))
"""


def test_cut_fidelity_ranks_the_three_cuts_as_their_definitions_do(tmp_path):
    out = run_script(FIDELITY, tmp_path)
    w, o = out["drifted"]["weight"], out["drifted"]["outputs"]
    assert out["orth"][0] > 0.5 and out["orth"][1] < 1e-9
    # Eckart-Young: no rank-5 weight is closer than the exact cut; with drifted factors the
    # slot cut is strictly worse; the outputs' cut is the best on the inputs it was made for
    assert w["exact"] <= w["outputs"] + 1e-12 and w["exact"] < w["slots"] - 0.01
    assert o["outputs"] <= o["exact"] + 1e-12 and o["outputs"] < o["slots"] - 0.01
    assert all(0 < v < 1 for d in (w, o) for v in d.values())
    # orthonormal factors: the slot cut is the exact cut
    ow = out["orthonormal"]["weight"]
    assert abs(ow["slots"] - ow["exact"]) < 1e-9


def test_cut_epochs_cut_in_place_computes_the_slot_cut_model_and_its_zeros_stay_untraced(
        tmp_path):
    # benchmarks.cut_epoch's rows "cut in place": rank.cut_form=in_place, as training cuts
    script = """
import json
import numpy as np
from absl import flags
from benchmarks import cut_epoch
flags.FLAGS(["cut_epoch", "--model=smallconv", "--examples=96", "--batch=32"])
from ssa_tf import cli
cli.import_tensorflow()
from benchmarks.timing import fraction_ranks
from ssa_tf.training.rank import apply_ranks
options = dict(rule="ssa", gamma=0.1)  # the orthogonality term on: its zeros must stay too
batches = cut_epoch.data()
model, twin = cut_epoch.build(options), cut_epoch.build(options)
model.fit(batches.take(2), verbose=0)
ranks = fraction_ranks(model, 0.5)
x = next(iter(batches))[0]
traces = [0]
step = model.train_step
def counted(data):
    traces[0] += 1
    return step(data)
model.train_step = counted
model.make_train_function(force=True)
model.fit(batches.take(1), verbose=0)
before = traces[0]
twin.set_weights(model.get_weights())
apply_ranks(model, ranks, in_place=True)
apply_ranks(twin, ranks)
same = float(np.abs(model.predict(x, verbose=0) - twin.predict(x, verbose=0)).max())
model.fit(batches, verbose=0)
layers = model.svd_layers()
zeros = {l.name: int(np.sum(l.s.numpy() == 0)) for l in layers}
dead_factors_zero = all(
    np.all(v.numpy()[..., l.s.numpy() == 0] == 0) for l in layers for v in l.factor_variables())
print(json.dumps(dict(same=same, zeros=zeros, full={l.name: l.rank for l in layers},
                      ranks=ranks, dead_factors_zero=bool(dead_factors_zero),
                      traces_after_cut=traces[0] - before)))
"""
    got = run_script(script, tmp_path)
    assert got["same"] < 1e-4  # the slot-cut model's function
    cut = [n for n in got["full"] if got["ranks"][n] < got["full"][n]]
    assert cut
    for name in cut:  # the dropped components are still exactly zero after 3 steps
        assert got["zeros"][name] == got["full"][name] - got["ranks"][name]
    assert got["dead_factors_zero"]
    assert got["traces_after_cut"] == 0


def test_step_cost_pairs_each_rounds_times_with_the_reference_rounds(tmp_path):
    # each round's time over the reference's in that round, not the medians' ratio
    script = """
import json
from absl import flags
from benchmarks import step_cost
from benchmarks.timing import paired
flags.FLAGS(["step_cost", "--against=control", "--repeats=3", "--steps=1"])
rounds = {"bp": [110.0, 220.0, 105.0], "control": [100.0, 200.0, 100.0],
          "ssa": [130.0, 220.0, 150.0]}
ratios = paired(rounds, "control")
medians = {k: sorted(v)[1] for k, v in rounds.items()}
print(json.dumps([ratios, step_cost.table(medians, None, ratios).splitlines()]))
"""
    ratios, lines = run_script(script, tmp_path)
    assert ratios["control"] == [1.0, 1.0, 1.0]
    # 1.3, 1.1, 1.5: median 1.3, where the medians' ratio is 150 / 100 = 1.5
    assert ratios["ssa"] == [1.3, 1.1, 1.5]
    assert ratios["bp"] == [1.1, 1.05, 1.1]
    assert "x control, round by round: median (range)" in lines[2]
    assert lines[-1] == "| ssa | 150 | 1.36 | 1.300 (1.100-1.500) |"


def test_step_cost_against_a_row_not_timed_is_one_line_and_status_2(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / ".keras"), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": ROOT}
    for against in ("no such row", "bp, input gradients in bfloat16"):  # (not a --row)
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.step_cost", f"--against={against}",
             "--row=ssa (chain, the default route)"], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"error: --against names no timed row: {against!r} (bp, or a --row)"]
