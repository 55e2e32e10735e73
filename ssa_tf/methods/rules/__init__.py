"""One file per learning rule, each holding its ``SPEC`` (``ssa_tf.methods.spec.RuleSpec``).

``ssa_tf.methods.registry`` lists them; adding a rule is one file here and one line there.
"""
