"""Structured convolutions: low-rank composites and root (filter-group) modules, 2D and 3D.

All layers share one rank-generic base (`StructuredConv`), use `keras.ops` (and, on
TensorFlow, its native grouped conv where `native_grouped_conv` finds one), are
registered serializable, describe their inner convolutions through `conv_parts` (for the
accounting) and `decompose` (plain conv steps with their weights, for the exporters).
"""

from .base import CompositeHeNormal, ConvPart, ConvStep, Decomposition, StructuredConv
from .lowrank import PRESETS, LowRankConv, LowRankConv2D, LowRankConv3D, resolve_basis
from .norm import GroupNormalization
from .root import (
    IMPLEMENTATIONS,
    RootConv,
    RootConv2D,
    RootConv3D,
    choose_implementation,
    native_grouped_conv,
)

__all__ = [
    "CompositeHeNormal",
    "ConvPart",
    "ConvStep",
    "Decomposition",
    "GroupNormalization",
    "IMPLEMENTATIONS",
    "LowRankConv",
    "LowRankConv2D",
    "LowRankConv3D",
    "PRESETS",
    "RootConv",
    "RootConv2D",
    "RootConv3D",
    "StructuredConv",
    "choose_implementation",
    "native_grouped_conv",
    "resolve_basis",
]
