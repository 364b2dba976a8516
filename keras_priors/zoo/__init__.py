"""The model zoo: structured VGG / NiN / ResNet networks of the papers, EfficientNet-Lite0.

>>> from keras_priors import zoo
>>> model = zoo.load("resnet50_root")          # the Deep Roots headline model (root-64)
>>> zoo.info("resnet50_root")["paper"]["params"]
15310000
>>> zoo.list_models("nin*")                    # doctest: +ELLIPSIS
['nin', 'nin_c3', ...]
"""

from . import catalog  # noqa: F401  (registers every model and shipped weights)
from .api import check_weights, info, list_models, load
from .registry import ModelSpec, PaperFigures, WeightsEntry, register
from .weights import WeightsError

__all__ = [
    "ModelSpec",
    "PaperFigures",
    "WeightsEntry",
    "WeightsError",
    "check_weights",
    "decode_predictions",
    "info",
    "list_models",
    "load",
    "preprocess_input",
    "register",
]


def preprocess_input(x, model="efficientnet_lite0"):
    """Scale raw 0..255 pixels the way `model`'s weights expect (a zoo name or a mode)."""
    from . import imagenet, registry

    mode = model if model in imagenet.PREPROCESSING else registry.get(model).preprocessing
    return imagenet.preprocess_input(x, mode)


def decode_predictions(preds, top=5):
    """ImageNet class names of the `top` scores per row: [(synset, name, score), ...]."""
    from . import imagenet

    return imagenet.decode_predictions(preds, top=top)
