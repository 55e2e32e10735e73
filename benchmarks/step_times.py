"""Median training-step time under a strategy, on synthetic data.

    python -m benchmarks.step_times --strategy=mirrored --logical_cpus=2 --model=smallconv --rule=ssa

``--mode`` is an alias of ``--rule``.
"""

from __future__ import annotations

import json

import numpy as np

from ssa_tf.config import STRATEGIES


def step_times(strategy="one_device", logical_cpus=1, model="smallconv", rule="ssa",
               batch_size=64, shape=(32, 32, 3), steps=30, warmup=5):
    """Seconds of each of ``steps`` training steps on synthetic data, after ``warmup``."""
    from ssa_tf import data as data_lib
    from ssa_tf.config import RunConfig
    from ssa_tf.training.callbacks import StepTimer
    from ssa_tf.training.loop import setup
    from ssa_tf.training.model import compile_model, model_from_config

    placement = setup(strategy, logical_cpus, batch_size=batch_size)
    cfg = RunConfig().with_overrides([f"model.model={model}", f"rule.name={rule}",
                                      f"train.batch_size={batch_size}"])
    spec = data_lib.load("synthetic", batch_size, max_train_examples=(steps + warmup) * batch_size,
                         synthetic_shape=shape)
    with placement.strategy.scope():
        net = model_from_config(cfg, spec.input_shape, spec.num_classes)
        compile_model(net)
    timer = StepTimer()
    placement.fit(net, spec.train, epochs=1, callbacks=[timer], verbose=0)
    return timer.seconds[warmup:]


def main(argv=None):
    import argparse

    from ssa_tf.cli import usage_error

    parser = argparse.ArgumentParser(description="median training step time under a strategy")
    parser.add_argument("--strategy", default="one_device", choices=STRATEGIES)
    parser.add_argument("--logical_cpus", type=int, default=1)
    parser.add_argument("--model", default="smallconv")
    parser.add_argument("--rule", default=None, help="learning rule (ssa)")
    parser.add_argument("--mode", default=None, help="an alias of --rule")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--shape", default="32,32,3")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    if args.rule is not None and args.mode is not None and args.rule != args.mode:
        usage_error(f"--rule={args.rule} and --mode={args.mode} differ (--mode is an alias of "
                    "--rule); give one of them")
    args.rule = args.rule or args.mode or "ssa"
    del args.mode
    seconds = step_times(args.strategy, args.logical_cpus, args.model, args.rule, args.batch_size,
                         tuple(int(d) for d in args.shape.split(",")), args.steps)
    ms = np.asarray(seconds) * 1000
    print(json.dumps({**vars(args), "median_ms": round(float(np.median(ms)), 1),
                      "min_ms": round(float(ms.min()), 1),
                      "p90_ms": round(float(np.percentile(ms, 90)), 1)}))


if __name__ == "__main__":
    main()
