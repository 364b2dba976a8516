"""CIFAR-style ResNets (He et al. 2016, section 4.2) and their root variants.

3 stages of basic blocks (16, 32, 64 filters; depth = 6n + 2), projection shortcuts where
the shape changes. A root variant puts filter groups in the first 3x3 conv of every block
(the second 3x3, ungrouped, mixes the groups), halving with depth like the Deep Roots
schedule: `resnet20_root8` has 8 / 4 / 2 groups in stages 1 / 2 / 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from .common import check_width, classifier, conv2d, make_input
from .registry import ModelSpec, register


@dataclass(frozen=True)
class CifarResNetConfig:
    depth: int = 20
    groups: tuple = (1, 1, 1)
    widths: tuple = (16, 32, 64)


def _bn_relu(x, name, relu=True):
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def build_resnet_cifar(cfg: CifarResNetConfig, include_top=True, input_shape=None, classes=10,
                       pooling=None, classifier_activation="softmax", name="resnet20", width=1.0):
    """A CIFAR ResNet of `cfg.depth` layers; `width` scales every stage's filters, rounded to
    the nearest multiple of the stage's groups (at least one multiple).

    >>> build_resnet_cifar(CifarResNetConfig(groups=(4, 2, 1)), input_shape=(28, 28, 1)).output_shape
    (None, 10)
    """
    if (cfg.depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2, received depth={cfg.depth}")
    n = (cfg.depth - 2) // 6
    width = check_width(width)
    inputs = make_input(input_shape, (32, 32, 3), 8)
    widths = [max(g, int(round(w * width / g)) * g) for w, g in zip(cfg.widths, cfg.groups)]
    x = _bn_relu(conv2d(inputs, widths[0], 3, use_bias=False, name="conv1"), "conv1")
    channels = widths[0]
    for stage, (w, g) in enumerate(zip(widths, cfg.groups)):
        for block in range(n):
            prefix = f"stage{stage + 1}_block{block + 1}"
            stride = 2 if block == 0 and stage > 0 else 1
            y = conv2d(x, w, 3, strides=stride, groups=g, use_bias=False, name=f"{prefix}_conv1")
            y = _bn_relu(y, f"{prefix}_conv1")
            y = conv2d(y, w, 3, use_bias=False, name=f"{prefix}_conv2")
            y = _bn_relu(y, f"{prefix}_conv2", relu=False)
            if stride != 1 or channels != w:
                x = conv2d(x, w, 1, strides=stride, use_bias=False, name=f"{prefix}_shortcut")
                x = keras.layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_out")(keras.layers.Add(name=f"{prefix}_add")([x, y]))
            channels = w
    x = classifier(x, include_top, classes, pooling, classifier_activation)
    return keras.Model(inputs, x, name=name)


VARIANTS = {
    "resnet20": CifarResNetConfig(),
    "resnet20_root2": CifarResNetConfig(groups=(2, 1, 1)),
    "resnet20_root4": CifarResNetConfig(groups=(4, 2, 1)),
    "resnet20_root8": CifarResNetConfig(groups=(8, 4, 2)),
}


def _builder(cfg):
    def build(include_top, input_shape, classes, pooling, classifier_activation, name, width=1.0):
        return build_resnet_cifar(cfg, include_top, input_shape, classes, pooling,
                                  classifier_activation, name, width)
    return build


for _name, _cfg in VARIANTS.items():
    register(ModelSpec(
        _name, family="resnet_cifar", builder=_builder(_cfg), input_shape=(32, 32, 3),
        classes=10, preprocessing="cifar", min_input=8,
        description=f"CIFAR ResNet-{_cfg.depth}"
        + ("" if max(_cfg.groups) == 1 else " groups " + "/".join(map(str, _cfg.groups))
           + " in the first 3x3 of each block"),
    ))
