"""ssa-tf: SSA (SVD-Space Alignment) and its baselines for TensorFlow/Keras 3.

    import ssa_tf
    model = ssa_tf.load_model("runs/RUN/model.keras")   # a run's model, ready to use
    from ssa_tf import SSAModel, compile_model, SVDDense, SVDConv2D  # TensorFlow starts

The package is laid out by part: ``nn`` (SVD layers, model builders),
``methods`` (the learning rules, one file each, and their locality cards),
``training`` (the model, the loop, checkpoints, strategies, rank cuts), ``data``,
``export``, ``tuning``, ``config`` (typed settings), ``preflight`` (a run's checks and
its workdir) and ``errors``.

Importing ``ssa_tf`` does nothing else: TensorFlow starts when a module that needs it
is imported (``ssa_tf.training.model`` registers the Keras classes), so the command
lines check their flags in a fraction of a second. A Keras user's habit works too:
after ``import ssa_tf``, ``keras.saving.load_model("RUN/model.keras")`` finds ssa-tf's
classes, registered the first time Keras looks one up (``_LazyRegistry`` below). A
built-in model saved before 2026-12-06 (the old layout of its modules) loads with
``ssa_tf.load_model``.
"""

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.2.0"
PACKAGE = "ssa_tf"  # the package name the Keras classes are registered under
_REGISTRY_MODULE = "keras.src.saving.object_registration"


def _register_keras_classes():
    import ssa_tf.training.model  # noqa: F401  (registers SSAModel and the SVD layers)


class _LazyRegistry(dict):
    """Keras's registry of custom objects, which imports ssa-tf's Keras classes the first
    time an ``ssa_tf>...`` name is looked up (Keras has finished importing by then)."""
    loading = False

    def _load(self, name):
        if (isinstance(name, str) and name.startswith(PACKAGE + ">")
                and not dict.__contains__(self, name) and not _LazyRegistry.loading):
            _LazyRegistry.loading = True
            try:
                _register_keras_classes()
            finally:
                _LazyRegistry.loading = False

    def __contains__(self, name):
        self._load(name)
        return dict.__contains__(self, name)

    def get(self, name, default=None):
        self._load(name)
        return dict.get(self, name, default)


def _install_registry(module):
    if not isinstance(module.GLOBAL_CUSTOM_OBJECTS, _LazyRegistry):
        module.GLOBAL_CUSTOM_OBJECTS = _LazyRegistry(module.GLOBAL_CUSTOM_OBJECTS)


class _RegistryFinder(importlib.abc.MetaPathFinder):
    """Installs ``_LazyRegistry`` as Keras's registry module finishes loading."""

    def find_spec(self, name, path=None, target=None):
        if name != _REGISTRY_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _install_registry(module)
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegistryFinder)]

        spec.loader.exec_module = exec_module
        return spec


if _REGISTRY_MODULE in sys.modules:
    _install_registry(sys.modules[_REGISTRY_MODULE])
elif not any(isinstance(f, _RegistryFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegistryFinder())


# what ``from ssa_tf import X`` gives, imported on first use (TensorFlow starts then)
_LAZY = {"SSAModel": "ssa_tf.training.model", "build_model": "ssa_tf.training.model",
         "compile_model": "ssa_tf.training.model", "SVDDense": "ssa_tf.nn",
         "SVDConv2D": "ssa_tf.nn", "RunConfig": "ssa_tf.config"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssa_tf' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


def load_model(path, **kwargs):
    """``keras.models.load_model`` with ssa-tf's model and layers registered; a built-in
    model saved before 2026-12-06 (its modules' old layout) loads too
    (``ssa_tf.training.saved``)."""
    from ssa_tf.training import saved

    return saved.load(path, **kwargs)
