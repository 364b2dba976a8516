"""Network-in-Network (CIFAR-10) and its root and low-rank variants, one builder over data.

NiN with batch norm, as in Deep Roots: conv1a 5x5,192 -> 1x1,160 -> 1x1,96 -> maxpool
3x3/2 -> conv2a 5x5,192 -> 1x1,192 -> 1x1,192 -> avgpool 3x3/2 -> conv3a 3x3,192 -> 1x1,192
-> 1x1,classes -> global average pool. Every conv is followed by BN and ReLU (the last
1x1 only by BN), dropout 0.5 after both pools. Pools round up like Caffe's, so a 32x32
input gives 16 and 8 (and the low-rank paper's 30x30 gives 15 and 7).

A variant is a table of per-layer overrides: `nin_root8` gives conv2a 8 groups and conv3a
4; `nin_c3` and `nin_c3_lr` are the low-rank paper's 3x3 variants (built from its numbers,
see docs/zoo.md: they match to 0.1%).
"""

from __future__ import annotations

import math

import keras

from .common import check_width, classifier, conv2d, make_input
from .registry import ModelSpec, PaperFigures, register

# (name, kernel, filters); filters None = the number of classes
BASE = (
    ("conv1a", 5, 192), ("conv1b", 1, 160), ("conv1c", 1, 96), "maxpool",
    ("conv2a", 5, 192), ("conv2b", 1, 192), ("conv2c", 1, 192), "avgpool",
    ("conv3a", 3, 192), ("conv3b", 1, 192), ("conv3c", 1, None),
)


def ceil_pool(x, kind, name, size=3, stride=2):
    """A pool that rounds up like Caffe's: ceil((n - size) / stride) + 1 outputs."""
    n = x.shape[1]
    layer = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    padding = "same"
    if n is not None and math.ceil((n - size) / stride) + 1 != math.ceil(n / stride):
        padding = "valid"  # odd n: Caffe's count is the unpadded one
    return layer(size, strides=stride, padding=padding, name=name)(x)


def build_nin(overrides=None, width=1.0, include_top=True, input_shape=None, classes=10,
              pooling=None, classifier_activation="softmax", name="nin"):
    """NiN with per-layer `overrides` {layer: dict(kernel=, filters=, kind=, groups=)}.

    `width` scales every layer but the classifier (for small, fast variants); a scaled
    width is rounded to the nearest multiple of the groups of the layer and of the layer
    it feeds (at least one such multiple), so grouped layers stay valid.

    >>> model = build_nin({"conv2a": {"groups": 8}, "conv3a": {"groups": 4}})
    >>> model.output_shape
    (None, 10)
    """
    overrides = overrides or {}
    width = check_width(width)
    inputs = make_input(input_shape, (32, 32, 3), 8)
    x = inputs
    convs = [item[0] for item in BASE if isinstance(item, tuple)]
    groups = [overrides.get(layer, {}).get("groups", 1) for layer in convs]
    # a scaled width stays divisible by this layer's groups and by its consumer's
    divisor = {layer: math.lcm(g, nxt) for layer, g, nxt in zip(convs, groups, groups[1:] + [1])}
    for item in BASE:
        if item in ("maxpool", "avgpool"):
            x = ceil_pool(x, item[:3], name=f"pool{'1' if item == 'maxpool' else '2'}")
            x = keras.layers.Dropout(0.5, name=f"{item}_dropout")(x)
            continue
        layer, kernel, filters = item
        spec = dict(kernel=kernel, filters=filters, kind="full", groups=1)
        spec.update(overrides.get(layer, {}))
        is_classifier = spec["filters"] is None
        if is_classifier and not include_top:
            break
        d = divisor[layer]
        filters = classes if is_classifier else max(d, round(spec["filters"] * width / d) * d)
        x = conv2d(x, filters, spec["kernel"], name=layer, kind=spec["kind"],
                   groups=spec["groups"])
        x = keras.layers.BatchNormalization(name=f"{layer}_bn")(x)
        if not is_classifier:
            x = keras.layers.ReLU(name=f"{layer}_relu")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Activation(classifier_activation, name="predictions")(x)
    else:
        x = classifier(x, False, classes, pooling, classifier_activation)
    return keras.Model(inputs, x, name=name)


def _roots(g2, g3):
    return {"conv2a": {"groups": g2}, "conv3a": {"groups": g3}}


C3 = {  # the low-rank paper's 3x3 NiN: 5x5 convs become 3x3 (stage 2: 3x3,192 -> 3x3,96)
    "conv1a": {"kernel": 3},
    "conv2a": {"kernel": 3},
    "conv2b": {"kernel": 3, "filters": 96},
}
C3_LR = {**C3, "conv1a": {"kernel": 3, "kind": "lr"}, "conv2a": {"kernel": 3, "kind": "lr"},
         "conv3a": {"kind": "lr"}}

DEEP_ROOTS = ("Ioannou et al., Deep Roots: Improving CNN Efficiency with Hierarchical Filter "
              "Groups, CVPR 2017 (NiN with batch norm, CIFAR-10)")
LOW_RANK = ("Ioannou et al., Training CNNs with Low-Rank Filters for Efficient Image "
            "Classification, ICLR 2016 (NiN, CIFAR-10, counted at 30x30 crops)")


def _roots_paper(mmacs, kparams, acc, cpu, gpu):
    return PaperFigures(
        DEEP_ROOTS, macs=round(mmacs * 1e6), params=round(kparams * 1e3), input_shape=(32, 32, 3),
        accuracy=f"CIFAR-10 accuracy {acc}; Caffe {cpu} ms CPU / {gpu} ms GPU per image",
    )


def _lowrank_paper(mmacs, kparams, acc):
    return PaperFigures(LOW_RANK, macs=round(mmacs * 1e6), params=round(kparams * 1e3),
                        input_shape=(30, 30, 3), accuracy=f"CIFAR-10 accuracy {acc}")


# name: (overrides, paper figures)
VARIANTS = {
    "nin": ({}, PaperFigures(
        DEEP_ROOTS, macs=222_500_000, params=967_000, input_shape=(32, 32, 3),
        accuracy="CIFAR-10 accuracy .9211; Caffe 39.0 ms CPU / .623 ms GPU per image",
        alternatives=(_lowrank_paper(192.9, 967, ".9188"),))),
    "nin_root2": (_roots(2, 1), _roots_paper(163.5, 737, ".9209", 31.2, ".551")),
    "nin_root4": (_roots(4, 2), _roots_paper(123.4, 455, ".9202", 27.6, ".480")),
    "nin_root8": (_roots(8, 4), _roots_paper(103.3, 315, ".9215", 24.4, ".482")),
    "nin_root16": (_roots(16, 8), _roots_paper(93.3, 245, ".9167", 23.0, ".475")),
    "nin_c3": (C3, _lowrank_paper(143.1, 774, ".9186")),
    "nin_c3_lr": (C3_LR, _lowrank_paper(104.3, 438, ".9178")),
}
ALIASES = {"nin_root": "nin_root8"}


def _builder(overrides):
    def build(include_top, input_shape, classes, pooling, classifier_activation, name,
              width=1.0):
        return build_nin(overrides, width, include_top, input_shape, classes, pooling,
                         classifier_activation, name)
    return build


def _describe(overrides):
    if not overrides:
        return "NiN with batch norm"
    parts = []
    for layer, o in overrides.items():
        bits = [f"{o['kernel']}x{o['kernel']}" if "kernel" in o else "",
                f"{o['groups']} groups" if o.get("groups", 1) > 1 else "",
                o.get("kind", "") if o.get("kind", "full") != "full" else "",
                f"{o['filters']} filters" if "filters" in o else ""]
        if any(bits):
            parts.append(f"{layer} " + " ".join(b for b in bits if b))
    return "NiN with batch norm; " + ", ".join(parts)


for _name, (_overrides, _paper) in VARIANTS.items():
    register(
        ModelSpec(_name, family="nin", builder=_builder(_overrides), input_shape=(32, 32, 3),
                  classes=10, preprocessing="cifar", paper=_paper, min_input=8,
                  description=_describe(_overrides)),
        aliases=[a for a, t in ALIASES.items() if t == _name],
    )
