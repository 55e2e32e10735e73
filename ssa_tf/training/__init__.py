"""Training: the model (``model``), the loop and its strategies, checkpoints, the workdir, callbacks and rank cuts, one run end to end (``run``)."""
