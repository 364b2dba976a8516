"""keras-priors: structural priors (low-rank and root convolutions) for Keras 3.

Subpackages load on first use, so `import keras_priors` stays cheap:

>>> import keras_priors
>>> keras_priors.layers.LowRankConv2D  # doctest: +ELLIPSIS
<class '...LowRankConv2D'>
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "layers",
    "complexity",
    "zoo",
    "data",
    "training",
    "analysis",
    "volumetric",
    "tflite_export",
    "distribute",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_priors' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
