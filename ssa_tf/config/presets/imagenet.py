"""The paper's ImageNet setting (supplementary section 2): resnet18 at 224, 200 epochs.

    python -m ssa_tf.train --preset=imagenet --data_dir=DIR --set data.manual_dir=TARS

Adam at 2e-4 for BP and 5e-4 for the local rules, x0.1 every 30 epochs, batch
256, random-resized crop, flip and color jitter; rules with SVD factors cut
after epoch 20 and every 10 epochs after it, to 90% of the energy. The
global route's feedback is a channel broadcast here: full-map feedback at
224x224 would need a 1000 x 200,704 matrix for the stem alone. A direct rule
that replays its modules holds the ones that fit within the stem's activations
(``rule.hold_within_peak``: the same gradients, fewer forward passes; at batch 256
ssa's chain steps in 1.37x BP's time instead of 1.52x at 0.48x its peak memory,
``benchmarks/reports/STEP_COST.md``). On hardware with bfloat16 arithmetic add
``--set rule.chain_dtype=bfloat16`` (the chain's pass in bfloat16: 1.23x at 0.48x memory
here), and ``--set train.error_dtype=bfloat16`` for every convolution's input gradient
(1.26-1.30x BP's step under the same setting; 1.22-1.25x since the plan counts what each
module's backward reads and holds one module more); neither is set here,
since without that hardware bfloat16 is slower. These memory ratios are against BP with
Keras's layer norm; every model now has ``nn.fast``'s, which halve BP's peak: SSA's is
0.60-0.62x BP's with them (the stem's own pass sets it). The replays are chained and the
stem's is in two slices of the batch (``rule.replay_chained``, ``rule.replay_slices=2``: the
same gradients, the first pass keeping no boundary beside the held tapes; the held
backward passes run last first): the same step (1.32x BP's in float32, both ways) at 0.49x
BP's peak instead of 0.63x; with both bfloat16 settings 0.47-0.49x at full rank and
0.43-0.44x at 50% (0.62-0.64x in one slice), the step 1.25-1.36x and 0.98-1.05x the
control's over ten runs (``benchmarks/reports/STEP_COST.md``, "Replays fed the replay
before"). The paper's spatial view is kept here; ``--set model.conv_factorization=channel``
(the view the 50% figures were cut in) steps at full rank in 1.22-1.29x the control's time
at 0.45-0.47x BP's peak, and at 50% rank, its replays' norms reading the first pass's
statistics, in 0.95-1.00x at 0.45x ("The replays' layer norms read the first pass's
statistics"). Expected result: not measured here
(no ImageNet, no GPU on this project's machine).
"""


def values(rule_name: str, given=None) -> dict:
    """The preset for rule ``rule_name``; ``given`` (the run's other flags) says its route."""
    from ssa_tf.methods import registry
    from ssa_tf.methods.spec import ROUTES

    rule = registry.RULES.get(rule_name)
    out = {"data.dataset": "imagenet2012", "model.model": "resnet18", "train.epochs": 200,
           "train.batch_size": 256, "train.lr_decay_epochs": tuple(range(30, 200, 30)),
           "train.learning_rate": 5e-4 if rule is None or rule.local else 2e-4}
    route = getattr(given.rule, "feedback", None) if given is not None else None
    spec = ROUTES.get(route or (rule.options.get("feedback") if rule else None))
    if rule is not None and spec is not None and "feedback_spatial" in spec.options:
        # the routes with a spatial form (ssa's default, the chain, has none)
        out["rule.feedback_spatial"] = "broadcast"
    recompute = getattr(given.rule, "recompute", None) if given is not None else None
    hold = getattr(given.rule, "hold_within_peak", None) if given is not None else None
    if (rule is not None and spec is not None and spec.needs_error and recompute is not False
            and "hold_within_peak" in rule.options and rule.options.get("recompute")):
        # the replayed modules' forward passes that the stem's peak leaves room to hold
        out["rule.hold_within_peak"] = True
        if hold is not False:  # the replays chained, the stem's in two slices: less memory
            out.update({"rule.replay_slices": 2, "rule.replay_chained": True})
    if rule is not None and rule.svd:
        # a rate warm-up over one epoch after each cut (1,153,051 images at batch 256)
        out.update({"rank.tau": 0.90, "rank.start": 20, "rank.interval": 10,
                    "rank.warmup_steps": 4504})
    return out
