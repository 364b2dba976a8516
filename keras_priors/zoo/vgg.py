"""VGG-11 and its low-rank variants (Ioannou et al., ICLR 2016), one builder over data.

Each conv layer of VGG-11 (widths 64,128,256,256,512,512,512,512) becomes the variant's
`kind` of layer; every conv is followed by ReLU; 2x2 max pools after conv1, conv2, conv3b
and conv4b; after conv5b VGG-11 pools 2x2 and flattens into fc6 (7*7*512 x 4096), the
gmp variants take a global max pool (fc6 is 512 x 4096). fc7 4096, fc8 = classes.

Two variants are built from the paper's *numbers*, which its one-line descriptions do
not reproduce (docs/zoo.md shows the arithmetic): `vgg11_gmp_lr_2x` and
`vgg11_gmp_lr_join_wfull` double the width of conv5a/conv5b only (3.14 G / 31.3 M and
6.34 G / 37.2 M match to 0.1%); `vgg11_gmp_lr_lde` keeps conv1 a full 3x3 of 64 filters
with stride 2, and every other layer is 3x1,c || 1x3,c -> 1x1,c/2 (1.02 G exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from .common import classifier, conv2d, make_input
from .registry import ModelSpec, PaperFigures, register

LAYERS = (("conv1", 64), ("conv2", 128), ("conv3a", 256), ("conv3b", 256), ("conv4a", 512),
          ("conv4b", 512), ("conv5a", 512), ("conv5b", 512))
POOL_AFTER = {"conv1", "conv2", "conv3b", "conv4b"}
REFERENCE = ("Ioannou et al., Training CNNs with Low-Rank Filters for Efficient Image "
             "Classification, ICLR 2016")


@dataclass(frozen=True)
class VGGConfig:
    kind: str = "full"  # "full" or a LowRankConv2D preset
    width: float = 1.0  # every conv layer's filters x width ...
    conv5_width: float = 1.0  # ... and conv5a/b's additionally x conv5_width
    conv1_kind: str | None = None  # conv1's own kind (64 filters) if it differs
    conv1_stride: int = 1
    gmp: bool = True


def build_vgg11(cfg: VGGConfig = VGGConfig(), include_top=True, input_shape=None, classes=1000,
                pooling=None, classifier_activation="softmax", name="vgg11"):
    """VGG-11 as described by `cfg`.

    >>> model = build_vgg11(VGGConfig("lr_join"), input_shape=(32, 32, 3), classes=10)
    >>> model.output_shape
    (None, 10)
    """
    inputs = make_input(input_shape, (224, 224, 3), 32)
    x = inputs
    for layer, filters in LAYERS:
        kind, stride = cfg.kind, 1
        if layer == "conv1":
            stride = cfg.conv1_stride
            kind = cfg.conv1_kind or cfg.kind
            filters = filters if cfg.conv1_kind else int(filters * cfg.width)
        else:
            filters = int(filters * cfg.width * (cfg.conv5_width if layer[:5] == "conv5" else 1))
        x = conv2d(x, filters, 3, name=layer, kind=kind, strides=stride)
        x = keras.layers.ReLU(name=f"{layer}_relu")(x)
        if layer in POOL_AFTER:
            x = keras.layers.MaxPooling2D(2, name=f"{layer}_pool")(x)
    if not include_top:
        return keras.Model(inputs, classifier(x, False, classes, pooling, None), name=name)
    if cfg.gmp:
        x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    else:
        x = keras.layers.MaxPooling2D(2, name="conv5b_pool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
    for fc in ("fc6", "fc7"):
        x = keras.layers.Dense(4096, activation="relu", name=fc)(x)
        x = keras.layers.Dropout(0.5, name=f"{fc}_dropout")(x)
    x = classifier(x, True, classes, None, classifier_activation, global_pool=None)
    return keras.Model(inputs, x, name=name)


# name: (config, paper GMACs, paper M params, top-1 / top-5 error %)
VARIANTS = {
    "vgg11": (VGGConfig(gmp=False), 7.61, 132.9, "35.1 / 13.8"),
    "vgg11_gmp": (VGGConfig(), 7.51, 32.2, "31.5 / 11.3"),
    "vgg11_gmp_sf": (VGGConfig("sf"), 6.53, 29.7, "32.7 / 12.1"),
    "vgg11_gmp_lr": (VGGConfig("lr"), 2.52, 26.1, "32.4 / 12.0"),
    "vgg11_gmp_lr_2x": (VGGConfig("lr", conv5_width=2), 3.14, 31.3, "30.7 / 11.1"),
    "vgg11_gmp_lr_join": (VGGConfig("lr_join"), 3.85, 27.3, "32.5 / 12.0"),
    "vgg11_gmp_lr_lde": (VGGConfig("lr_lde", width=0.5, conv1_kind="full", conv1_stride=2),
                         1.02, 26.4, "33.3 / 12.5"),
    "vgg11_gmp_lr_join_wfull": (VGGConfig("lr_join_wfull", conv5_width=2), 6.34, 37.2,
                                "29.6 / 10.3"),
}


def _builder(cfg):
    def build(include_top, input_shape, classes, pooling, classifier_activation, name):
        return build_vgg11(cfg, include_top, input_shape, classes, pooling,
                           classifier_activation, name)
    return build


def _describe(cfg):
    parts = [f"VGG-11, conv layers: {cfg.kind}"]
    if cfg.width != 1:
        parts.append(f"width x{cfg.width}")
    if cfg.conv5_width != 1:
        parts.append(f"conv5 width x{cfg.conv5_width}")
    if cfg.conv1_kind:
        parts.append(f"conv1 {cfg.conv1_kind}")
    if cfg.conv1_stride != 1:
        parts.append(f"conv1 stride {cfg.conv1_stride}")
    parts.append("global max pool" if cfg.gmp else "7x7x512 fc6")
    return ", ".join(parts)


for _name, (_cfg, _gmacs, _mparams, _err) in VARIANTS.items():
    register(ModelSpec(
        _name, family="vgg", builder=_builder(_cfg), input_shape=(224, 224, 3), classes=1000,
        preprocessing="caffe", min_input=32,
        paper=PaperFigures(REFERENCE, macs=round(_gmacs * 1e9), params=round(_mparams * 1e6),
                           accuracy=f"ILSVRC top-1 / top-5 error {_err} %",
                           input_shape=(224, 224, 3)),
        description=_describe(_cfg),
    ))
