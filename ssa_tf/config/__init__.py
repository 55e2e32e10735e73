"""A run's configuration: typed sections, presets and validation, with no TensorFlow import.

``python -m ssa_tf.train``, ``tuning/search.py`` and the benchmarks share it:

    from ssa_tf.config import RunConfig, validate
    cfg = RunConfig().with_overrides(["data.dataset=cifar10", "rule.beta=0"])
    problem = validate(cfg)   # one line, or None

Every check runs before TensorFlow starts, so a user's mistake costs a
fraction of a second and ends with one line and exit status 2.
"""

from ssa_tf.allowed_values import (ACTIVATIONS, DATASETS, HEAD_INITS, LABELS, MODELS, NORMS,
                                   RANK_FEEDBACK_CUTS, STRATEGIES)
from ssa_tf.methods.registry import NAMES as RULE_NAMES
from ssa_tf.config.schema import (FIELD_HELP, SECTIONS, DataConfig, ModelConfig, RankConfig,
                                  RuleConfig, RunConfig, RuntimeConfig, TrainConfig)
from ssa_tf.config.validate import (check_minimums, flag, rank_cut_epochs, tf_config_workers,
                                    validate, validate_distribution, validate_rule)
from ssa_tf.errors import UsageError


__all__ = ["ACTIVATIONS", "DATASETS", "DataConfig", "FIELD_HELP", "HEAD_INITS", "LABELS",
           "MODELS", "ModelConfig", "NORMS", "RANK_FEEDBACK_CUTS", "RULE_NAMES", "RankConfig",
           "RuleConfig", "RunConfig", "RuntimeConfig", "SECTIONS", "STRATEGIES", "TrainConfig",
           "UsageError", "check_minimums", "flag", "rank_cut_epochs", "tf_config_workers",
           "validate", "validate_distribution", "validate_rule"]
