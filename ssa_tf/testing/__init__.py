"""Tools that test the library's promises (imported by the test suite; TensorFlow on import).

``locality``: a learning rule's locality card proven over a whole training run, by
record and replay (docs/ALGORITHM.md §3a).
"""
