"""Low-rank composite convolutions (Ioannou et al., ICLR 2016).

A composite layer learns a *basis* of small filters - e.g. 3x1 and 1x3, each over all
input channels - applied to the same input with their responses concatenated, optionally
followed by a 1x1 conv that learns their linear combination (`combine=True`). The
activation comes only after the whole composite. A basis is either a named preset or an
explicit list of `(shape, filters)` members; presets are data (`PRESETS`).

Parallel members are aligned as if each were zero-embedded in the centre of the bounding
kernel, so a LowRankConv equals a plain conv with that embedded kernel for every stride,
padding and dilation. With `sequential=True` the members run one after another (the
separable form: 1xk then kx1).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import keras

from .base import (
    COMPOSITE_HE,
    PACKAGE,
    ConvPart,
    ConvStep,
    Decomposition,
    StructuredConv,
    conv_output_length,
    mark_recomputable,
    positive_int,
    recompute_gradient,
    same_padding,
)


@dataclass(frozen=True)
class Preset:
    """A basis as data: symbolic member shapes ("k1" = k x 1) and their share of `filters`."""

    members: tuple  # ((symbolic_shape, fraction of filters), ...)
    combine: bool
    sequential: bool = False
    doc: str = ""


PRESETS = {
    2: {
        "lr": Preset((("k1", 1 / 2), ("1k", 1 / 2)), False, doc="kx1 || 1xk, half the filters each"),
        "lr_join": Preset(
            (("k1", 1 / 2), ("1k", 1 / 2)), True, doc="kx1 || 1xk halves, then a 1x1 to filters"
        ),
        "lr_lde": Preset(
            (("k1", 2), ("1k", 2)), True,
            doc="low-dimensional embedding: kx1 || 1xk of 2*filters each, 1x1 down to filters",
        ),
        "lr_join_wfull": Preset(
            (("k1", 3 / 8), ("1k", 3 / 8), ("kk", 1 / 4)), True,
            doc="kx1 3/8 || 1xk 3/8 || kxk 1/4, then a 1x1 to filters",
        ),
        "sf": Preset(
            (("1k", 1), ("k1", 1)), False, sequential=True,
            doc="separable filters: 1xk then kx1 (sequential)",
        ),
    },
    3: {
        "lr": Preset(
            (("k11", 1 / 3), ("1k1", 1 / 3), ("11k", 1 / 3)), False,
            doc="axis-aligned kx1x1 || 1xkx1 || 1x1xk, a third of the filters each",
        ),
        "lr_join": Preset(
            (("k11", 1 / 3), ("1k1", 1 / 3), ("11k", 1 / 3)), True,
            doc="axis-aligned thirds, then a 1x1x1 to filters",
        ),
        "lr_lde": Preset(
            (("k11", 4 / 3), ("1k1", 4 / 3), ("11k", 4 / 3)), True,
            doc="low-dimensional embedding: axis-aligned basis 4x filters wide, 1x1x1 down",
        ),
        "lr_planar_join": Preset(
            (("1kk", 1 / 3), ("k1k", 1 / 3), ("kk1", 1 / 3)), True,
            doc="planar 1xkxk || kx1xk || kxkx1 thirds, then a 1x1x1",
        ),
        "lr_join_wfull": Preset(
            (("k11", 1 / 4), ("1k1", 1 / 4), ("11k", 1 / 4), ("kkk", 1 / 4)), True,
            doc="axis-aligned quarters || full kxkxk quarter, then a 1x1x1",
        ),
        "sf": Preset(
            (("11k", 1), ("1k1", 1), ("k11", 1)), False, sequential=True,
            doc="separable filters: 1x1xk then 1xkx1 then kx1x1 (sequential)",
        ),
    },
}


def _closest(name, choices):
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return f"{hint} Available: {', '.join(sorted(choices))}"


def _distribute(filters, fractions):
    """Integer counts proportional to `fractions` whose sum is round(filters*sum)."""
    exact = [filters * f for f in fractions]
    counts = [math.floor(e + 1e-9) for e in exact]
    target = round(filters * sum(fractions))
    for i in range(target - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


def _parse_shape(shape, rank):
    if isinstance(shape, str):
        try:
            shape = tuple(int(p) for p in shape.lower().split("x"))
        except ValueError:
            shape = None
    elif isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,) * rank
    else:
        try:
            shape = tuple(int(p) if not isinstance(p, bool) else None for p in shape)
        except (TypeError, ValueError):
            shape = None
    if shape is None or len(shape) != rank or any(p is None or p <= 0 for p in shape):
        return None
    return shape


def resolve_basis(basis, filters, kernel_size, rank, combine=None, sequential=None):
    """Turn a preset name or an explicit spec into `(members, combine, sequential)`.

    `members` is a tuple of `(shape, count)`; raises ValueError naming the bad argument.
    """
    if isinstance(basis, str):
        presets = PRESETS[rank]
        if basis not in presets:
            other = [r for r in PRESETS if r != rank and basis in PRESETS[r]]
            if other:
                raise ValueError(
                    f"basis={basis!r} is a {other[0]}D-only preset; a {rank}D low-rank layer "
                    f"has {', '.join(sorted(presets))}"
                )
            raise ValueError(
                f"Unknown basis preset basis={basis!r} for a {rank}D low-rank layer"
                + _closest(basis, presets)
            )
        preset = presets[basis]
        k = 3 if kernel_size is None else kernel_size
        if isinstance(k, (tuple, list)):
            if len(set(k)) != 1:
                raise ValueError(
                    f"basis presets need a single kernel size, received kernel_size={kernel_size!r}"
                )
            k = k[0]
        k = positive_int(k, "kernel_size")
        counts = _distribute(filters, [f for _, f in preset.members])
        if min(counts) == 0:
            raise ValueError(
                f"filters={filters} is too small for basis={basis!r}: a member would get 0 filters"
            )
        members = tuple(
            (tuple(k if c == "k" else 1 for c in sym), n)
            for (sym, _), n in zip(preset.members, counts)
        )
        if sequential is not None and sequential != preset.sequential:
            raise ValueError(
                f"sequential={sequential} contradicts basis={basis!r}; leave it unset for presets"
            )
        combine = preset.combine if combine is None else combine
        produced = counts[-1] if preset.sequential else sum(counts)
        if not combine and produced != filters:
            raise ValueError(
                f"basis={basis!r} with combine=False would produce {produced} channels, not "
                f"filters={filters}; leave combine unset (this preset ends with a 1x1 combination)"
            )
        return members, combine, preset.sequential

    try:
        items = list(basis)
    except TypeError:
        raise ValueError(
            f"basis must be a preset name or a list of (shape, filters), received basis={basis!r}"
        ) from None
    if not items:
        raise ValueError("basis must have at least one member, received basis=[]")
    members = []
    for item in items:
        try:
            shape, count = item
        except (TypeError, ValueError):
            raise ValueError(
                f"each basis member must be a (shape, filters) pair, received {item!r} in basis"
            ) from None
        parsed = _parse_shape(shape, rank)
        if parsed is None:
            raise ValueError(
                f"basis member shape must be {rank} positive ints (e.g. "
                f"{'3x1' if rank == 2 else '3x1x1'!r}), received {shape!r}"
            )
        if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
            raise ValueError(
                f"basis member filters must be a positive integer, received {count!r} for "
                f"shape {shape!r}"
            )
        members.append((parsed, count))
    combine = bool(combine)
    sequential = bool(sequential)
    produced = members[-1][1] if sequential else sum(n for _, n in members)
    if not combine and produced != filters:
        what = "the last sequential member produces" if sequential else "basis counts add up to"
        raise ValueError(
            f"{what} {produced} channels but filters={filters}; without combine the basis "
            "must produce exactly `filters` channels"
        )
    if kernel_size is not None:
        bound = _bounding(members, rank, sequential)
        ks = (kernel_size,) * rank if isinstance(kernel_size, int) else tuple(kernel_size)
        if ks != bound:
            raise ValueError(
                f"kernel_size={kernel_size!r} does not match the explicit basis, whose "
                f"bounding kernel is {bound}; leave kernel_size=None with an explicit basis"
            )
    return tuple(members), combine, sequential


def _bounding(members, rank, sequential):
    if sequential:
        return tuple(sum(s[a] - 1 for s, _ in members) + 1 for a in range(rank))
    return tuple(max(s[a] for s, _ in members) for a in range(rank))


def _shape_name(shape):
    return "x".join(str(s) for s in shape)


class LowRankConv(StructuredConv):
    """Rank-generic low-rank composite convolution; use LowRankConv2D / LowRankConv3D.

    Args:
        filters: output channels of the whole composite layer.
        kernel_size: the k of a preset (default 3); leave None with an explicit basis.
        basis: a preset name (see `PRESETS`) or a list of `(shape, filters)` members, shape
            as a tuple or a string like "3x1".
        combine: follow the basis by a 1x1 conv to `filters` (default: the preset's; False
            for an explicit basis).
        sequential: run the members one after another instead of in parallel (presets set
            this themselves).
        kernel_initializer: default "composite_he_normal", std = sqrt(2 / sum_g |w_g| n_g).
        recompute: in training, keep only the layer input for the backward pass and
            recompute the member convs there, instead of storing the member outputs and
            their concatenation (default False). Outputs and gradients are the same either
            way. "per_sample": the same, with the backward pass run one sample at a time
            (TensorFlow), which lowers the peak further for a slower step: in the 96^3
            U-Net the TensorFlow allocator's training peak is 0.90x unet3d's with True and
            0.78x with "per_sample" (0.88x / 0.83x at 128^3; docs/performance.md).
        Other arguments as in keras Conv layers.
    """

    def __init__(
        self,
        rank,
        filters,
        kernel_size=None,
        basis="lr",
        combine=None,
        sequential=None,
        strides=1,
        padding="valid",
        kernel_initializer=COMPOSITE_HE,
        recompute=False,
        **kwargs,
    ):
        positive_int(filters, "filters")
        if not (isinstance(recompute, bool) or recompute == "per_sample"):
            raise ValueError("recompute must be True, False or 'per_sample', received "
                             f"recompute={recompute!r}")
        members, resolved_combine, resolved_sequential = resolve_basis(
            basis, filters, kernel_size, rank, combine, sequential
        )
        super().__init__(
            rank,
            filters,
            strides=strides,
            padding=padding,
            combine=resolved_combine,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.kernel_size = kernel_size
        self.basis = basis
        self._combine_arg = combine
        self._sequential_arg = sequential
        self.sequential = resolved_sequential
        self.members = members
        self.bounding_kernel_size = _bounding(members, rank, resolved_sequential)
        self.recompute = recompute

    def call(self, inputs, training=None):
        if not (training and self.recompute):
            return super().call(inputs)
        y = recompute_gradient(self._linear, inputs, self._terms(inputs),
                               per_sample=self.recompute == "per_sample")
        if self.activation not in (None, keras.activations.linear):
            return self.activation(y)
        mark_recomputable(y, self._linear, inputs)
        return y

    def _linear(self, x):
        """The composite without its activation."""
        y = self._spatial_call(x)
        return self._combine_step()(y, self.data_format) if self.combine else y

    def _terms(self, x):
        """Functions whose outputs sum to `_linear(x)`: each parallel member through its
        rows of the 1x1 combination (the first adds the combination's bias), so that the
        recomputing backward pass can take one member at a time. None for a sequential
        basis or a plain concatenation, whose members do not add up."""
        if self.sequential or not self.combine:
            return None
        steps, _ = self._spatial_steps(self._spatial_shape(x.shape))
        terms, start = [], 0
        for i, (step, (_, n)) in enumerate(zip(steps, self.members)):
            def term(x, step=step, rows=slice(start, start + n), first=i == 0):
                combine = self._combine_step(rows, bias=first)
                return combine(step(x, self.data_format), self.data_format)
            terms.append(term)
            start += n
        return terms

    # ------------------------------------------------------------------ build
    def _spatial_width(self):
        if self.sequential:
            return self.members[-1][1]
        return sum(n for _, n in self.members)

    def _build_spatial(self, in_channels):
        self.basis_kernels, self.basis_biases = [], []
        if self.sequential:
            fans = [math.prod(s) * n for s, n in self.members]
        else:
            fans = [sum(math.prod(s) * n for s, n in self.members)] * len(self.members)
        channels = in_channels
        for i, ((shape, n), fan) in enumerate(zip(self.members, fans)):
            tag = f"basis{i}_{_shape_name(shape)}"
            self.basis_kernels.append(self._add_kernel(f"{tag}_kernel", (*shape, channels, n), fan))
            self.basis_biases.append(self._add_bias(f"{tag}_bias", n))
            if self.sequential:
                channels = n

    # ------------------------------------------------------------------- call
    def _stage_strides(self):
        """Sequential mode: each axis is strided by the last member spanning it."""
        strides = [[1] * self.rank for _ in self.members]
        for a, s in enumerate(self.strides):
            spanning = [i for i, (shape, _) in enumerate(self.members) if shape[a] > 1]
            strides[spanning[-1] if spanning else -1][a] = s
        return [tuple(s) for s in strides]

    def _member_padding(self, shape, spatial_in):
        """How to run one parallel member so it matches the centre-embedded full kernel.

        Returns "same", "valid", or per-axis (before, after) pads where negative = crop.
        """
        pads = []
        for a, (k, s) in enumerate(zip(self.bounding_kernel_size, shape)):
            d, stride = self.dilation_rate[a], self.strides[a]
            full, own = d * (k - 1) + 1, d * (s - 1) + 1
            offset = d * ((k - s) // 2)
            if self.padding == "valid":
                lo = hi = 0
            elif stride == 1:
                lo, hi = (full - 1) // 2, full - 1 - (full - 1) // 2
            elif spatial_in[a] is None:
                raise ValueError(
                    f"{self.__class__.__name__} '{self.name}' with strides={self.strides} and "
                    "padding='same' needs static spatial dimensions; received spatial shape "
                    f"{tuple(spatial_in)}"
                )
            else:
                lo, hi = same_padding(spatial_in[a], full, stride)
            pads.append((lo - offset, hi - (full - own - offset)))
        if all(p == (0, 0) for p in pads):
            return "valid"
        if self.padding == "same":
            own_same = []
            for a, s in enumerate(shape):
                own = self.dilation_rate[a] * (s - 1) + 1
                if self.strides[a] == 1:
                    own_same.append(((own - 1) // 2, own - 1 - (own - 1) // 2))
                else:
                    own_same.append(same_padding(spatial_in[a], own, self.strides[a]))
            if own_same == pads:
                return "same"
        return pads

    def _spatial_steps(self, spatial_in, split_groups=False):
        names = [f"basis{i}_{_shape_name(shape)}" for i, (shape, _) in enumerate(self.members)]
        if self.sequential:
            strides = self._stage_strides()
            paddings = [self.padding] * len(self.members)
        else:
            strides = [self.strides] * len(self.members)
            paddings = [self._member_padding(shape, spatial_in) for shape, _ in self.members]
        return [
            ConvStep(name, kernel, bias, s, p, self.dilation_rate)
            for name, kernel, bias, s, p in zip(
                names, self.basis_kernels, self.basis_biases, strides, paddings)
        ], self.sequential

    def _spatial_call(self, x):
        steps, sequential = self._spatial_steps(self._spatial_shape(x.shape))
        return Decomposition(tuple(steps), sequential, None, None, self.data_format).spatial(x)

    # ------------------------------------------------------------ accounting
    def _spatial_parts(self, in_channels, spatial_in, spatial_out):
        if not self.sequential:
            return [
                ConvPart(
                    f"basis{i}_{_shape_name(shape)}", shape, in_channels, n, 1,
                    (*spatial_out, n), self.use_bias,
                )
                for i, (shape, n) in enumerate(self.members)
            ]
        parts, channels, spatial = [], in_channels, tuple(spatial_in)
        for i, ((shape, n), strides) in enumerate(zip(self.members, self._stage_strides())):
            spatial = tuple(
                conv_output_length(n, d * (k - 1) + 1, s, self.padding)
                for n, k, s, d in zip(spatial, shape, strides, self.dilation_rate)
            )
            parts.append(
                ConvPart(
                    f"basis{i}_{_shape_name(shape)}", shape, channels, n, 1,
                    (*spatial, n), self.use_bias,
                )
            )
            channels = n
        return parts

    def get_config(self):
        config = super().get_config()
        basis = self.basis
        if not isinstance(basis, str):
            basis = [[list(shape), n] for shape, n in self.members]
        config.update(
            {
                "kernel_size": self.kernel_size,
                "basis": basis,
                "combine": self._combine_arg,
                "sequential": self._sequential_arg,
                "recompute": self.recompute,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class LowRankConv2D(LowRankConv):
    """2D low-rank composite convolution.

    Presets (`filters` = output channels; see `PRESETS[2]`): "lr" (3x1 || 1x3 halves),
    "lr_join" (halves, then a 1x1), "lr_lde" (3x1 || 1x3 of 2*filters each, then a 1x1
    down to filters: a low-dimensional embedding), "lr_join_wfull" (3x1 3/8 || 1x3 3/8 ||
    3x3 1/4, then a 1x1), "sf" (1x3 then 3x1). The paper's 2x variant is "lr" with twice
    the filters (in VGG-11's conv5 layers; see keras_priors.zoo.vgg).

    >>> import numpy as np
    >>> layer = LowRankConv2D(64, 3, basis="lr_join", padding="same", activation="relu")
    >>> tuple(layer(np.zeros((1, 32, 32, 16), "float32")).shape)
    (1, 32, 32, 64)
    >>> custom = LowRankConv2D(48, basis=[("5x1", 16), ("1x5", 16), ("3x3", 16)])
    """

    def __init__(self, filters, kernel_size=None, basis="lr", **kwargs):
        super().__init__(2, filters, kernel_size, basis, **kwargs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class LowRankConv3D(LowRankConv):
    """3D low-rank composite convolution.

    Presets (see `PRESETS[3]`): "lr" (axis-aligned kx1x1 || 1xkx1 || 1x1xk thirds, as in
    DeepMedic), "lr_join" (the same, then a 1x1x1), "lr_lde", "lr_planar_join" (1xkxk ||
    kx1xk || kxkx1), "lr_join_wfull" (axis-aligned quarters || a full kxkxk quarter), and
    "sf" (1x1xk then 1xkx1 then kx1x1).

    >>> import numpy as np
    >>> layer = LowRankConv3D(24, 3, basis="lr_join", padding="same")
    >>> tuple(layer(np.zeros((1, 8, 8, 8, 4), "float32")).shape)
    (1, 8, 8, 8, 24)
    """

    def __init__(self, filters, kernel_size=None, basis="lr", **kwargs):
        super().__init__(3, filters, kernel_size, basis, **kwargs)
