"""What tests/test_tuning.py and tests/test_tuning_report.py share: the small search
they describe (mlp, 200 examples, two trials of 1 epoch)."""

from ssa_tf import config as cfg_lib
from ssa_tf.tuning import settings


def small_search(directory, **kwargs):
    run = cfg_lib.RunConfig().with_overrides(["model.model=mlp", "data.max_train_examples=200"])
    values = dict(run=run, directory=str(directory), project_name="s", max_trials=2,
                  epochs_per_trial=1)
    return settings.SearchConfig(**{**values, **kwargs})
