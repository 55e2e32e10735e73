"""The old-layout model.keras fixtures of tests/test_saved_layout.py: built-in models saved
while they were lists of Module layers, before they were converted like a user's model.

Made with the code of commit dbeaf1e, from the repository root:

    python tests/data/old_layout/make.py tests/data/old_layout

and each .keras then re-zipped with deflate (0.5 MB instead of 0.9; Keras reads both).
"""

import sys

import keras
import numpy as np

from ssa_tf.training.model import SSAModel

out = sys.argv[1]
x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
y = np.arange(4) % 10
outputs = {}
# resnet32 without norms: its downsampling blocks' conv2 and projection are at one depth
# (the module's output layer is conv2's)
for name, arch, rule, kw, rank in [("resnet32_ssa", "resnet32", "ssa", {"norm": "none"}, 1),
                                   ("smallconv_fa", "smallconv", "fa", {}, 2)]:
    probe = SSAModel(arch, (8, 8, 3), 10, rule=rule, seed=2, **kw)
    ranks = {k: rank for k in probe.ranks()}  # every layer cut: a small file
    m = SSAModel(arch, (8, 8, 3), 10, rule=rule, seed=2, ranks=ranks, **kw)
    m.compile(optimizer=keras.optimizers.SGD(0.05),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.train_on_batch(x, y)
    m.save(f"{out}/{name}.keras")
    outputs[name] = m(x, training=False).numpy()
np.savez(f"{out}/outputs.npz", x=x, **outputs)
