"""KerasTuner searches of SSA's loss weights: ``settings`` (no TensorFlow), ``search``, ``report``."""
