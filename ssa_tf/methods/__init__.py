"""The learning rules: BP, svd-bp, DFA, SSA and the named variants fa and bp-lagged-copy.

``spec`` (no TensorFlow) holds each rule's options, defaults and locality
card; ``rules`` the strategy objects the trainer calls. See ``card.py`` for
what a card says.
"""
