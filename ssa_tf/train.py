"""Train an image classifier with SSA, DFA or BP.

    python -m ssa_tf.train                     # embedded MNIST sample, smallconv, SSA
    python -m ssa_tf.train --dataset=cifar10 --data_dir=../shared/tfds --mode=bp --epochs=5

Flags and wiring only; the logic lives in ssa_tf.config / ssa_tf.run.
Every flag is checked before TensorFlow is imported: a mistake ends with one
line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import sys
import time

from absl import flags

from ssa_tf import config as cfg_lib
from ssa_tf.cli import usage_error
from ssa_tf import cli
from ssa_tf.methods import spec as methods

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "mnist5k", f"one of {', '.join(cfg_lib.DATASETS)}")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding the prepared dataset")
flags.DEFINE_string("manual_dir", None, "imagenet2012: folder holding ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar (default <data_dir>/downloads/manual)")
flags.DEFINE_string("label", "fine", "cifar100 labels: fine (100 classes) or coarse (20)")
flags.DEFINE_float("validation_split", 0.0, "fraction of train held out for validation "
                   "(0: validate on the final test split)")
flags.DEFINE_integer("image_size", None, "imagenet2012: training/evaluation crop (default 224)")
flags.DEFINE_list("synthetic_shape", ["32", "32", "3"], "synthetic: input shape")
flags.DEFINE_integer("synthetic_classes", 10, "synthetic: number of classes")
flags.DEFINE_string("model", "smallconv", f"one of {', '.join(cfg_lib.MODELS)}")
flags.DEFINE_string("mode", "ssa", "learning rule: " + "; ".join(
    f"{n}: {r.summary}" for n, r in methods.RULES.items()))
flags.DEFINE_integer("epochs", 3, "training epochs")
flags.DEFINE_integer("batch_size", 64, "global batch size")
flags.DEFINE_float("learning_rate", None, "Adam rate; default per rule: "
                   + ", ".join(f"{n} {r.learning_rate:g}" for n, r in methods.RULES.items()))
flags.DEFINE_string("norm", "layer", f"one of {', '.join(cfg_lib.NORMS)}")
flags.DEFINE_string("activation", "leaky_relu", f"one of {', '.join(cfg_lib.ACTIVATIONS)}")
flags.DEFINE_string("head_init", "zero", "the classifier's initial weight: zero (SVD form: "
                    "s = 0), or glorot")
# the learning rule's options; unset: the rule's default; one it does not take is refused
flags.DEFINE_float("alpha", None, "weight of the CE (task) term (default 1)")
flags.DEFINE_float("beta", None, "SVD rules: weight of the alignment term (default 0.01)")
flags.DEFINE_float("gamma", None, "SVD rules: weight of the orthogonality term (default 0.1)")
flags.DEFINE_float("ortho_lambda", None, "SVD rules: Frobenius penalty lambda of eq. 19 "
                   "(default 0)")
flags.DEFINE_string("feedback", None, f"dfa, ssa: error route, {', '.join(methods.ROUTES)} "
                    f"(default: dfa {methods.RULES['dfa'].options['feedback']}, "
                    f"ssa {methods.RULES['ssa'].options['feedback']})")
flags.DEFINE_string("feedback_spatial", None,
                    f"global route on feature maps: {', '.join(methods.SPATIAL)} (default full)")
flags.DEFINE_string("feedback_init", None,
                    f"feedback weights: {', '.join(methods.FEEDBACK_INIT)} (random: an "
                    "independent draw; forward: a one-time copy of the initial weight)")
flags.DEFINE_boolean("chain_jacobians", None,
                     "fa, bp-lagged-copy: normalizations and max-pools apply their Jacobians "
                     "at the forward pass (default on)")
flags.DEFINE_float("feedback_tracking", None,
                   "bp-lagged-copy: after each step every B_X moves this fraction towards X "
                   "(default 0.1)")
flags.DEFINE_boolean("stiefel_retraction", None,
                     "SVD rules: after every step retract U and V onto the Stiefel manifold (QR)")
flags.DEFINE_float("s_rate_scale", None,
                   "SVD rules: Adam's rate for the singular values s as a multiple of the rate "
                   "(U, V and everything else; default 1)")
flags.DEFINE_integer("seed", 1, "random seed (>= 1)")
flags.DEFINE_string("workdir", None, "output folder (default runs/<dataset>-<model>-<mode>-<time>)")
flags.DEFINE_string("preset", "none", f"seed settings: {', '.join(cfg_lib.PRESETS)}")
flags.DEFINE_integer("max_train_examples", None, "use only the first N training examples")
flags.DEFINE_boolean("augment", True, "CIFAR: random crop after 4-pixel padding and flip; "
                     "ImageNet: random-resized crop, flip, color jitter")
flags.DEFINE_list("lr_decay_epochs", [], "epochs at which the rate is multiplied by lr_decay_factor")
flags.DEFINE_float("lr_decay_factor", 0.1, "learning-rate decay factor")
flags.DEFINE_float("rank_tau", None, "SSA rank cuts: energy fraction kept, in (0, 1]; unset: no cuts")
flags.DEFINE_integer("rank_start", 0, "first cut after epoch max(rank_start, rank_interval)")
flags.DEFINE_integer("rank_interval", 10, "epochs between rank cuts")
flags.DEFINE_integer("rank_min", 1, "no layer is cut below this rank")
flags.DEFINE_list("rank_exempt", [], "SVD layer names that keep their rank (e.g. m0_conv,classifier)")
flags.DEFINE_string("rank_feedback_cut", "first", "how a cut treats the feedback factors: svd "
                    "(re-factored like the forward ones) or first (SPEC: their first r "
                    "components)")
flags.DEFINE_boolean("rank_final_cut", False, "also cut after the last epoch (no training "
                     "follows it: a smaller model at some accuracy)")
flags.DEFINE_integer("rank_warmup_steps", 0, "after each rank cut the rate ramps up linearly "
                     "over this many steps (0: off)")
flags.DEFINE_integer("diagnostics_every", 0, "every N steps log each module's angle to the BP "
                     "gradient and the SVD layers' forward/feedback metrics to "
                     "alignment.csv and TensorBoard (0: off)")
flags.DEFINE_integer("checkpoint_steps", 0, "also checkpoint every N steps (0: at epoch ends only)")
flags.DEFINE_integer("keep_checkpoints", 2, "checkpoints kept in <workdir>/backup (>= 2)")
flags.DEFINE_boolean("restart", False, "discard the workdir's previous run and start over "
                     "(default: resume an unfinished run with the same settings)")
flags.DEFINE_integer("skip_nonfinite_steps", 0, "skip up to N steps with a NaN/Inf loss or "
                     "gradient before stopping (0: stop at the first)")
flags.DEFINE_string("strategy", "auto", f"{', '.join(cfg_lib.STRATEGIES)}: auto is mirrored on "
                    "more than one GPU, else one device; multi_worker reads TF_CONFIG (BUILD.md)")
flags.DEFINE_integer("logical_cpus", 1, "testing aid: split the CPU into N devices for "
                     "--strategy=mirrored on a machine without GPUs")


def config_from_flags() -> cfg_lib.RunConfig:
    if FLAGS.preset not in cfg_lib.PRESETS:
        raise ValueError(f"--preset={FLAGS.preset!r} is not valid; choose from: "
                         f"{', '.join(cfg_lib.PRESETS)}")
    values = {}
    for field in dataclasses.fields(cfg_lib.RunConfig):
        if field.name in FLAGS:
            values[field.name] = FLAGS[field.name].value
    try:
        values["lr_decay_epochs"] = tuple(int(e) for e in FLAGS.lr_decay_epochs)
    except ValueError:
        raise ValueError(f"--lr_decay_epochs must be integers, got {FLAGS.lr_decay_epochs}")
    values["rank_exempt"] = tuple(FLAGS.rank_exempt)
    try:
        values["synthetic_shape"] = tuple(int(d) for d in FLAGS.synthetic_shape)
    except ValueError:
        raise ValueError(f"--synthetic_shape must be integers, got {FLAGS.synthetic_shape}")
    # a preset fills in what the user did not say explicitly
    for name, value in cfg_lib.preset_values(FLAGS.preset, values["mode"]).items():
        if not FLAGS[name].present:
            values[name] = value
    cfg = cfg_lib.RunConfig(**values)
    if cfg.workdir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg.workdir = os.path.join("runs", f"{cfg.dataset}-{cfg.model}-{cfg.mode}-{stamp}")
    return cfg


# what a full disk, a read-only file system or a folder without permission raise
WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}


def writable_problem(workdir):
    """One line if ``workdir`` cannot be created or written into, else None."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return f"--workdir={workdir} is not writable: {e.strerror or e}"
    return None


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        cfg = config_from_flags()
    except ValueError as e:
        usage_error(str(e))
    problem = cfg_lib.validate(cfg)
    if problem:
        usage_error(problem)
    if cfg.strategy == "multi_worker" and not FLAGS["workdir"].present:
        # a restarted worker group finds its backups there
        usage_error("--strategy=multi_worker needs an explicit --workdir, the same on every run")

    # the data must be there too (a file-system check; data imports TensorFlow lazily)
    from ssa_tf import data as data_lib
    try:
        data_lib.check_available(cfg.dataset, cfg.data_dir, cfg.manual_dir)
    except data_lib.DataError as e:
        usage_error(str(e))

    print(cfg.card().line(), flush=True)
    problem = writable_problem(cfg.workdir)
    if problem:
        usage_error(problem)
    # the workdir's lock, and resume or restart, also before TensorFlow starts
    # (multi-worker: the chief does it in run.train, the workers share the flag)
    from ssa_tf import reliability
    lock = reliability.WorkdirLock(cfg.workdir)
    try:
        if cfg.strategy != "multi_worker":
            lock.acquire()
            reliability.prepare_workdir(cfg)
    except cfg_lib.UsageError as e:
        lock.release()
        usage_error(str(e))
    try:
        _train(cfg, data_lib, reliability)
    finally:
        lock.release()


def _train(cfg, data_lib, reliability):
    # TensorFlow starts only now, after the flags are known to be good.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ssa_tf import distribute

    # before anything else touches a device
    distribute.configure_logical_cpus(cfg.logical_cpus)
    from ssa_tf import run

    try:
        summary = run.train(cfg)
    except (data_lib.DataError, cfg_lib.UsageError, distribute.CheckpointError) as e:
        usage_error(str(e))
    except reliability.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        usage_error(f"cannot write the run's outputs in {cfg.workdir}: {e.strerror or e}"
                    + (f" ({e.filename})" if e.filename else ""))
    print(f"{cfg.mode} {cfg.model} on {cfg.dataset}: test accuracy {summary['test_accuracy']:.4f} "
          f"({summary['test_split']}), {sum(summary['epoch_seconds']):.1f} s training; "
          f"outputs in {cfg.workdir}")


def run_main():
    cli.run(main)


if __name__ == "__main__":
    run_main()
