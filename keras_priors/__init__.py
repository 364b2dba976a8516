"""keras-priors: structural priors (low-rank and root convolutions) for Keras 3.

Subpackages load on first use, so `import keras_priors` stays cheap:

>>> import keras_priors
>>> keras_priors.layers.LowRankConv2D  # doctest: +ELLIPSIS
<class '...LowRankConv2D'>
"""

import importlib
import os

# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 class features.
# On an AVX2-only CPU without them the 3D U-Nets train 4x slower in 3x the memory (Eigen's
# 3D conv gradients) and grouped convs lose their native kernel (docs/performance.md). Read
# when TensorFlow loads, so it applies if keras_priors is imported first (the CLI always
# is); an explicit TF_ENABLE_ONEDNN_OPTS=0 is respected.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
