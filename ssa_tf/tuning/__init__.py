"""KerasTuner searches of SSA's loss weights: ``settings`` (no TensorFlow), ``search``, ``report``;
``command`` is the command line (``python tuning/search.py``, ``ssa-search``)."""
