"""ResNet and its root (filter-group) variants (Ioannou et al., "Deep Roots", CVPR 2017).

One bottleneck builder; every variant is data: blocks per stage, groups in the 3x3 conv
of each stage (the root schedule halves groups with depth), bottleneck widths, where
the stride sits, and post- vs pre-activation. `resnet50*` follow the original ResNet
(stride in the first 1x1 of a stage, as the paper's Caffe models and keras' ResNet50);
`resnet200*` the pre-activation fb.resnet.torch model (stride in the 3x3); ResNeXt-50
widens the bottleneck and groups every 3x3 by 32.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from .common import classifier, conv2d, make_input
from .registry import ModelSpec, PaperFigures, register

DEEP_ROOTS = "Ioannou et al., Deep Roots: Improving CNN Efficiency with Hierarchical Filter Groups, CVPR 2017"


@dataclass(frozen=True)
class ResNetConfig:
    blocks: tuple
    groups: tuple = (1, 1, 1, 1)
    widths: tuple = (64, 128, 256, 512)
    outputs: tuple = (256, 512, 1024, 2048)
    stride_in_1x1: bool = True
    preact: bool = False


def _bn(x, name):
    return keras.layers.BatchNormalization(epsilon=1.001e-5, name=name)(x)


def _block(x, cfg, stage, index, width, out, groups):
    name = f"conv{stage + 2}_block{index + 1}"
    stride = 2 if index == 0 and stage > 0 else 1
    s1, s3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)
    project = index == 0
    if cfg.preact:
        pre = keras.layers.ReLU(name=f"{name}_preact_relu")(_bn(x, f"{name}_preact_bn"))
        shortcut = (
            conv2d(pre, out, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")
            if project else x
        )
        y = conv2d(pre, width, 1, strides=s1, use_bias=False, name=f"{name}_1_conv")
        y = keras.layers.ReLU(name=f"{name}_1_relu")(_bn(y, f"{name}_1_bn"))
        y = conv2d(y, width, 3, strides=s3, groups=groups, use_bias=False, name=f"{name}_2_conv")
        y = keras.layers.ReLU(name=f"{name}_2_relu")(_bn(y, f"{name}_2_bn"))
        y = conv2d(y, out, 1, use_bias=False, name=f"{name}_3_conv")
        return keras.layers.Add(name=f"{name}_add")([shortcut, y])
    if project:
        shortcut = _bn(conv2d(x, out, 1, strides=stride, use_bias=False, name=f"{name}_0_conv"),
                       f"{name}_0_bn")
    else:
        shortcut = x
    y = conv2d(x, width, 1, strides=s1, use_bias=False, name=f"{name}_1_conv")
    y = keras.layers.ReLU(name=f"{name}_1_relu")(_bn(y, f"{name}_1_bn"))
    y = conv2d(y, width, 3, strides=s3, groups=groups, use_bias=False, name=f"{name}_2_conv")
    y = keras.layers.ReLU(name=f"{name}_2_relu")(_bn(y, f"{name}_2_bn"))
    y = _bn(conv2d(y, out, 1, use_bias=False, name=f"{name}_3_conv"), f"{name}_3_bn")
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_resnet(cfg: ResNetConfig, include_top=True, input_shape=None, classes=1000,
                 pooling=None, classifier_activation="softmax", name="resnet"):
    """An ImageNet bottleneck ResNet described by `cfg`.

    >>> cfg = ResNetConfig(blocks=(1, 1, 1, 1), groups=(8, 4, 2, 1))
    >>> build_resnet(cfg, input_shape=(64, 64, 3), classes=10).output_shape
    (None, 10)
    """
    inputs = make_input(input_shape, (224, 224, 3), 32)
    x = conv2d(inputs, 64, 7, strides=2, use_bias=False, name="conv1_conv")
    x = keras.layers.ReLU(name="conv1_relu")(_bn(x, "conv1_bn"))
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    for stage, (n, g, w, o) in enumerate(zip(cfg.blocks, cfg.groups, cfg.widths, cfg.outputs)):
        for index in range(n):
            x = _block(x, cfg, stage, index, w, o, g)
    if cfg.preact:
        x = keras.layers.ReLU(name="post_relu")(_bn(x, "post_bn"))
    x = classifier(x, include_top, classes, pooling, classifier_activation)
    return keras.Model(inputs, x, name=name)


ROOTS = {  # groups in the 3x3 of res2 / res3 / res4 / res5
    1: (1, 1, 1, 1), 2: (2, 1, 1, 1), 4: (4, 2, 1, 1), 8: (8, 4, 2, 1), 16: (16, 8, 4, 2),
    32: (32, 16, 8, 4), 64: (64, 32, 16, 8),
}
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}

# name: (config, paper GMACs, paper M params, paper accuracy)
VARIANTS = {
    "resnet50": (ResNetConfig(DEPTHS[50]), 3.858, 25.50, "ILSVRC top-1 / top-5 acc .730 / .916"),
    "resnet50_root2": (ResNetConfig(DEPTHS[50], ROOTS[2]), 3.685, 25.45, "ILSVRC top-1 / top-5 acc .727 / .912"),
    "resnet50_root4": (ResNetConfig(DEPTHS[50], ROOTS[4]), 3.367, 25.13, "ILSVRC top-1 / top-5 acc .734 / .918"),
    "resnet50_root8": (ResNetConfig(DEPTHS[50], ROOTS[8]), 2.861, 23.20, "ILSVRC top-1 / top-5 acc .734 / .918"),
    "resnet50_root16": (ResNetConfig(DEPTHS[50], ROOTS[16]), 2.435, 18.69, "ILSVRC top-1 / top-5 acc .732 / .918"),
    "resnet50_root32": (ResNetConfig(DEPTHS[50], ROOTS[32]), 2.221, 16.44, "ILSVRC top-1 / top-5 acc .729 / .915"),
    "resnet50_root64": (ResNetConfig(DEPTHS[50], ROOTS[64]), 2.115, 15.31, "ILSVRC top-1 / top-5 acc .732 / .915"),
    "resnet101": (ResNetConfig(DEPTHS[101]), None, None, None),
    "resnet152": (ResNetConfig(DEPTHS[152]), None, None, None),
    "resnet200": (ResNetConfig(DEPTHS[200], stride_in_1x1=False, preact=True), None, 62.45,
                  "ILSVRC top-1 / top-5 err 21.96 / 6.23 %"),
    "resnet200_root16": (ResNetConfig(DEPTHS[200], ROOTS[16], stride_in_1x1=False, preact=True),
                         None, 39.79, "ILSVRC top-1 / top-5 err 21.87 / 6.01 %"),
    "resnet200_root64": (ResNetConfig(DEPTHS[200], ROOTS[64], stride_in_1x1=False, preact=True),
                         None, 32.81, "ILSVRC top-1 / top-5 err 22.10 / 6.04 % (27% fewer FLOPs than resnet200)"),
    "resnext50_32x4d": (ResNetConfig(DEPTHS[50], (32,) * 4, (128, 256, 512, 1024),
                                     stride_in_1x1=False), 4.23, 25.03, None),
}
ALIASES = {"resnet50_root": "resnet50_root64"}
RESNEXT = "Xie et al., Aggregated Residual Transformations for Deep Neural Networks, CVPR 2017"


def _convention(name):
    if name.startswith("resnext"):
        return "bn_affine"  # the figure is torchvision's count
    if name.startswith("resnet200"):
        return "no_bn_no_fc"  # fb.resnet.torch's figures leave out BN and the fc layer
    return "no_bn"


def _builder(cfg):
    def build(include_top, input_shape, classes, pooling, classifier_activation, name):
        return build_resnet(cfg, include_top, input_shape, classes, pooling,
                            classifier_activation, name)
    return build


for _name, (_cfg, _gmacs, _mparams, _acc) in VARIANTS.items():
    _roots = "" if max(_cfg.groups) == 1 else " groups " + "/".join(map(str, _cfg.groups))
    register(
        ModelSpec(
            _name, family="resnet", builder=_builder(_cfg), input_shape=(224, 224, 3),
            classes=1000, preprocessing="caffe",
            paper=None if _mparams is None else PaperFigures(
                RESNEXT if _name.startswith("resnext") else DEEP_ROOTS,
                macs=None if _gmacs is None else round(_gmacs * 1e9), params=round(_mparams * 1e6),
                accuracy=_acc, input_shape=(224, 224, 3), param_convention=_convention(_name),
            ),
            description=(
                "ResNeXt-50 32x4d: bottleneck widths 128..1024, 3x3 convs in 32 groups"
                if _name.startswith("resnext") else
                f"ResNet-{sum(_cfg.blocks) * 3 + 2}{_roots}"
                + (", pre-activation" if _cfg.preact else "")
            ),
        ),
        aliases=[a for a, t in ALIASES.items() if t == _name],
    )
