"""The learning rules: one file each in ``rules/``, listed in ``registry.py``.

``spec`` (no TensorFlow) says what a rule is (options, defaults, card); ``base``
holds the two kinds of rule they build on (end to end, local), ``routes`` how the
error reaches a module, ``chain`` the linear feedback network, ``losses`` SSA's
terms. See ``card.py`` for what a card says.
"""
