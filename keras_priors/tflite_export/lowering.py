"""Lowering passes: rewrite a copy of a Keras model into built-in layers TFLite can run.

`lower(model, target)` walks the functional graph in topological order and rebuilds it
from new layers (weights copied; the source model is never touched):

- "split_groups": a grouped Conv3D (RootConv3D, or keras Conv3D with groups > 1) becomes
  channel slices + one conv per group + Concatenate (TFLite cannot run a grouped
  CONV_3D); for the Edge TPU a grouped Conv2D is split the same way.
- "builtin_structured": LowRankConv2D/3D and RootConv2D/3D become keras Conv /
  ZeroPadding / Cropping / Concatenate layers exactly as their `_spatial_call` computes,
  then the 1x1 combination, bias and activation.
- "volume_as_rows" (static 5D inputs; target "edgetpu", or "cpu" at batch 1 - see
  `lower`): the volume [1, D, H, W, C] is laid out
  as [1, D*H, W, C] and every 3D layer becomes 2D ops on 4D tensors with at most three
  dimensions larger than 1 (a (kd, kh, kw) conv = depth-shifted copies concatenated on
  channels + a (kh, kw) Conv2D with per-slice zero padding; (kd, 1, 1) = a (kd, 1) Conv2D
  on [1, D, H*W, C]; pooling and upsampling first within slices, then across them).
- "builtin_norm": GroupNormalization (instance norm included) becomes `GroupNorm`, written
  with MEAN, SUB, MUL, RSQRT and ADD only, which all have int8 kernels and map to the Edge
  TPU (Keras' own layer leaves NEG and SQUARE in float after int8 conversion).
- "builtin_pool" (native layout): non-overlapping 3D pooling becomes 2D pooling on
  reshaped views (TFLite has no 3D pooling op).

Layers without a lowering are cloned with their weights and listed in `unsupported` when
the target cannot run them; a 3D layer the row layout cannot express runs on the 5D
volume (Reshape back) and is reported, never silently kept.

>>> import numpy as np
>>> from keras_priors import zoo
>>> net = zoo.load("unet3d_lowrank", input_shape=(16, 16, 16, 4), classes=3, widths=(8, 16))
>>> low = lower(net, target="edgetpu")
>>> low.input_layout, low.model.input_shape, low.unsupported
('volume_as_rows', (1, 256, 16, 4), [])
>>> x = np.random.rand(1, 16, 16, 16, 4).astype("float32")
>>> y = low.from_lowered_output(low.model.predict(low.to_lowered_input(x), verbose=0))
>>> bool(np.allclose(y, net.predict(x, verbose=0), atol=1e-5))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import keras
import numpy as np

from ..complexity import functional, input_layers, walk
from ..layers import GroupNormalization as KPGroupNormalization
from ..layers import LowRankConv, RootConv

TARGETS = ("cpu", "edgetpu")
MAX_NON_UNIT_DIMS = 3  # Edge TPU: tensors with at most 3 dimensions larger than 1
ROWS = "volume_as_rows"

L = keras.layers
CONV = {1: L.Conv1D, 2: L.Conv2D, 3: L.Conv3D}
PAD = {1: L.ZeroPadding1D, 2: L.ZeroPadding2D, 3: L.ZeroPadding3D}
CROP = {1: L.Cropping1D, 2: L.Cropping2D, 3: L.Cropping3D}

# Layers that act per voxel or over all voxels of a channel: on the row layout they are
# the same layer (their channel axis, if any, must be the last one).
CHANNELWISE = {
    "ReLU", "Activation", "LeakyReLU", "ELU", "Dropout", "GaussianNoise", "GaussianDropout",
    "Identity", "Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average", "Dense",
}
AXIS_LAYERS = {"BatchNormalization", "GroupNormalization", "LayerNormalization",
               "Concatenate", "Softmax"}


@dataclass
class Lowered:
    """A lowered copy of a model and what the passes did.

    `applied`: one `{"layer", "class", "pass", "detail"}` per rewritten layer of the source;
    `unsupported`: `{"layer", "class", "reason"}` for what the target still cannot run;
    `input_layout`: "native", or "volume_as_rows" when 3D inputs are fed as [1, D*H, W, C].
    """

    model: keras.Model
    applied: list = field(default_factory=list)
    unsupported: list = field(default_factory=list)
    input_layout: str = "native"
    input_geometry: list = field(default_factory=list)  # per input: (D, H, W) or None
    output_geometry: list = field(default_factory=list)  # per output: (D, H, W) or None

    def to_lowered_input(self, x):
        """Native input batch(es) -> the lowered model's input layout."""
        return _map_arrays(x, self.input_geometry, _volume_to_rows)

    def from_lowered_output(self, y):
        """Lowered model output(s) -> the source model's output layout."""
        return _map_arrays(y, self.output_geometry, _rows_to_volume)


def _map_arrays(arrays, geometry, fn):
    if isinstance(arrays, (list, tuple)):
        return [fn(np.asarray(a), g) for a, g in zip(arrays, geometry)]
    return fn(np.asarray(arrays), geometry[0] if geometry else None)


def _volume_to_rows(x, geom):
    if geom is None:
        return x
    if x.ndim != 5 or tuple(x.shape[1:4]) != tuple(geom):
        raise ValueError(f"expected a volume batch of shape (N, {', '.join(map(str, geom))}, C), "
                         f"received shape {x.shape}")
    d, h, w = geom
    return x.reshape(x.shape[0], d * h, w, x.shape[-1])


def _rows_to_volume(y, geom):
    if geom is None:
        return y
    return y.reshape(y.shape[0], *geom, y.shape[-1])


def non_unit_violations(model, limit=MAX_NON_UNIT_DIMS):
    """Tensors of `model` with more than `limit` dimensions larger than 1.

    An unknown dimension counts as larger than 1, except the batch (converted as 1).

    >>> m = keras.Sequential([keras.Input((4, 4, 4, 2), batch_size=1), keras.layers.ReLU()])
    >>> [v["reason"] for v in non_unit_violations(m)]  # doctest: +ELLIPSIS
    ['tensor of shape (1, 4, 4, 4, 2) has 4 dimensions larger than 1 (limit 3)', ...]
    """
    found, seen = [], set()
    model = functional(model, "non_unit_violations")
    produced = [(layer, [x]) for layer, x in zip(input_layers(model), model.inputs)]
    for layer, tensors in produced + [(c.layer, c.outputs) for c in walk(model)]:
        for t in tensors:
            n = sum(1 for i, d in enumerate(t.shape) if (d is None and i) or (d or 0) > 1)
            if n > limit and id(t) not in seen:
                seen.add(id(t))
                found.append({"layer": layer.name, "class": type(layer).__name__,
                              "reason": f"tensor of shape {tuple(t.shape)} has {n} "
                                        f"dimensions larger than 1 (limit {limit})"})
    return found


def lower(model, target="cpu", batch_size=None):
    """Rewrite `model` (a functional Keras model) for `target` ("cpu" or "edgetpu").

    3D volumes of static size are laid out as rows ([1, D*H, W, C], all 2D ops) for the
    Edge TPU always, and for the CPU when the lowered model runs at batch 1 (`batch_size=1`,
    as `export` does, or a model built with batch 1): in LiteRT the 2D form is faster than
    CONV_3D and quantizes to int8 (unet3d_lowrank 48^3, 1 thread: fp32 202 vs 346 ms, int8
    69 vs 335 ms). Otherwise the CPU keeps the native layout, with 3D pooling as 2D pooling.

    >>> from keras_priors.layers import RootConv2D
    >>> x = keras.Input((8, 8, 8))
    >>> m = keras.Model(x, RootConv2D(8, 3, groups=4, padding="same", name="root")(x))
    >>> [a["pass"] for a in lower(m, "edgetpu").applied]
    ['split_groups']
    """
    if target not in TARGETS:
        raise ValueError(f"Unknown target={target!r}; choose one of {', '.join(TARGETS)}")
    graph = functional(model, "lower()")
    if batch_size not in (None, 1):
        raise ValueError(f"batch_size must be None or 1, received batch_size={batch_size!r}")
    return _Lowering(graph, target, batch_size).run()


def _numpy(v):
    return None if v is None else np.asarray(keras.ops.convert_to_numpy(v))


def _same_pads(extent):
    return ((extent - 1) // 2, extent - 1 - (extent - 1) // 2)


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


def _builtin(layer):
    return type(layer).__module__.startswith("keras.") or isinstance(
        layer, (GroupNorm, KPGroupNormalization))


@keras.saving.register_keras_serializable(package="keras_priors.lowering")
class GroupNorm(keras.layers.Layer):
    """GroupNormalization over the last axis written with MEAN, SUB, MUL, RSQRT and ADD only
    (Keras' own emits NEG and SQUARE, which stay float after int8 conversion):

        mean = MEAN(x over the spatial axes [and the channels of a group])
        d = x - mean;  var = MEAN(d * d);  y = d * (RSQRT(var + eps) * gamma) + beta

    `groups` = channels is instance normalization: no reshape at rank <= 4 (MEAN over the
    spatial axes); otherwise x is viewed as [N, spatial, groups, channels // groups]
    (instance norm: [N, spatial, channels]), which needs static non-batch dimensions.

    >>> x = np.random.default_rng(0).normal(size=(1, 6, 5, 8)).astype("float32")
    >>> ref = keras.layers.GroupNormalization(groups=4)
    >>> ours = GroupNorm(groups=4, epsilon=ref.epsilon)
    >>> bool(np.allclose(ours(x), ref(x), atol=1e-5))
    True
    """

    def __init__(self, groups, epsilon=1e-3, center=True, scale=True, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon = int(groups), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def build(self, input_shape):
        c = input_shape[-1]
        if c is None or c % self.groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible into {self.groups} "
                             "groups")
        self.gamma = self.add_weight((c,), initializer="ones", name="gamma") \
            if self.scale else None
        self.beta = self.add_weight((c,), initializer="zeros", name="beta") \
            if self.center else None

    def call(self, x):
        ops = keras.ops
        shape, c, g = tuple(x.shape), x.shape[-1], self.groups
        x = ops.cast(x, "float32")  # as keras' layer: statistics in float32 (a no-op in fp32)
        if g == c and len(shape) <= 4:
            t, axes, param = x, tuple(range(1, len(shape) - 1)), (c,)
        else:
            if None in shape[1:]:
                raise ValueError(f"GroupNorm needs static non-batch dimensions, received input "
                                 f"shape {shape}")
            view = (math.prod(shape[1:-1]),) + ((c,) if g == c else (g, c // g))
            t = ops.reshape(x, (-1, *view))
            axes, param = (1,) if g == c else (1, 3), view[1:]
        mean = ops.mean(t, axis=axes, keepdims=True)
        d = ops.subtract(t, mean)
        var = ops.mean(ops.multiply(d, d), axis=axes, keepdims=True)
        inv = ops.rsqrt(ops.add(var, self.epsilon))
        if self.scale:
            inv = ops.multiply(inv, ops.reshape(ops.cast(self.gamma, inv.dtype), param))
        y = ops.multiply(d, inv)
        if self.center:
            y = ops.add(y, ops.reshape(ops.cast(self.beta, y.dtype), param))
        y = y if t is x else ops.reshape(y, (-1, *shape[1:]))
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


def _group_norm_ok(layer, x):
    """A keras GroupNormalization over the last axis that GroupNorm can replace."""
    if not isinstance(layer, L.GroupNormalization) or not isinstance(x, keras.KerasTensor):
        return False
    rank = len(x.shape)
    return layer.axis in (-1, rank - 1) and x.shape[-1] is not None and (
        (layer.groups in (-1, x.shape[-1]) and rank <= 4) or None not in x.shape[1:])


class _Lowering:
    def __init__(self, model, target, batch_size=None):
        self.model, self.target = model, target
        batch = {x.shape[0] for x in model.inputs}
        # rows need batch 1: the Edge TPU always runs it; the CPU when asked to (or built so)
        self.rows_mode = target == "edgetpu" or batch_size == 1 or batch == {1}
        self.applied, self.unsupported = [], []
        self.names = {op.name for op in model.operations}
        self.geom = {}  # id(new tensor) -> (D, H, W): tensor laid out as rows
        self.converted = {}  # id(tensor) -> its other layout
        self.clones = {}  # id(source layer) -> clone (shared layers stay shared)
        self.keep = []
        self.cur = ""

    # ---------------------------------------------------------------- plumbing
    def name(self, tag):
        base = f"{self.cur}_{tag}"
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}{i}", i + 1
        self.names.add(name)
        return name

    def op(self, cls, tag, x, *args, weights=None, **kwargs):
        layer = cls(*args, name=self.name(tag), **kwargs)
        y = layer(x)
        if weights is not None:
            layer.set_weights([w for w in weights if w is not None])
        return y

    def rows(self, t, geom):
        self.geom[id(t)] = tuple(geom)
        self.keep.append(t)  # ids stay unique while the walk runs
        return t

    def note(self, layer, pass_name, detail):
        self.applied.append({"layer": layer.name, "class": type(layer).__name__,
                             "pass": pass_name, "detail": detail})

    def report(self, name, cls, reason):
        if all(u["layer"] != name for u in self.unsupported):
            self.unsupported.append({"layer": name, "class": cls, "reason": reason})

    def to_native(self, t):
        if id(t) not in self.geom:
            return t
        if id(t) not in self.converted:
            d, h, w = self.geom[id(t)]
            self.converted[id(t)] = self.op(L.Reshape, "to_volume", t, (d, h, w, t.shape[-1]))
        return self.converted[id(t)]

    def to_rows(self, t):
        """A rows tensor for `t`, or None if `t` is not a static channels-last volume."""
        if id(t) in self.geom:
            return t
        shape = tuple(t.shape)
        if len(shape) != 5 or shape[0] not in (None, 1) or None in shape[1:]:
            return None
        if id(t) not in self.converted:
            _, d, h, w, c = shape
            self.converted[id(t)] = self.rows(self.op(L.Reshape, "to_rows", t, (d * h, w, c)),
                                              (d, h, w))
        return self.converted[id(t)]

    # -------------------------------------------------------------- the walk
    def run(self):
        model, tensors = self.model, {}
        inputs, in_geom = [], []
        rows_mode = self.rows_mode
        for x, layer in zip(model.inputs, input_layers(model)):
            shape = tuple(x.shape)
            self.cur = layer.name
            if rows_mode and len(shape) == 5 and shape[0] in (None, 1) and None not in shape[1:]:
                _, d, h, w, c = shape
                new = self.rows(keras.Input((d * h, w, c), batch_size=1, dtype=x.dtype,
                                            name=layer.name), (d, h, w))
                self.note(layer, ROWS, f"input {shape} fed as (1, {d * h}, {w}, {c})")
            else:
                if self.target == "edgetpu" and len(shape) == 5:
                    self.report(layer.name, "InputLayer", f"volume input of shape {shape} needs "
                                "static spatial dims and batch 1 to be laid out as rows")
                new = keras.Input(batch_shape=shape, dtype=x.dtype, name=layer.name)
            tensors[id(x)] = new
            inputs.append(new)
            in_geom.append(self.geom.get(id(new)))
        for call in walk(model):
            args, kwargs = keras.tree.map_structure(
                lambda t: tensors[id(t)] if isinstance(t, keras.KerasTensor) else t,
                (call.args, call.kwargs))
            self.cur = call.layer.name
            outs = self.lower_node(call.layer, args, kwargs)
            for old, new in zip(call.outputs, keras.tree.flatten(outs)):
                tensors[id(old)] = new
        outputs = [tensors[id(y)] for y in model.outputs]
        out_geom = [self.geom.get(id(y)) for y in outputs]
        lowered = keras.Model(inputs if len(inputs) > 1 else inputs[0],
                              outputs if len(outputs) > 1 else outputs[0],
                              name=f"{model.name}_{self.target}")
        self.scan(lowered)
        layout = ROWS if any(g is not None for g in in_geom) else "native"
        return Lowered(lowered, self.applied, self.unsupported, layout, in_geom, out_geom)

    def lower_node(self, layer, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        single = len(args) == 1 and not kwargs and isinstance(args[0], keras.KerasTensor)
        if self.rows_mode and single and (
                id(args[0]) in self.geom or len(args[0].shape) == 5):
            handler = _rows_handler(layer)
            if handler is not None:
                rx = self.to_rows(args[0])
                why = "input is not a static channels-last volume" if rx is None else \
                    handler(self, layer, rx)
                if not isinstance(why, str):
                    return why
                self.report(layer.name, type(layer).__name__, f"not lowered to 2D ops: {why}")
        if self.geom and self.channelwise(layer, args):
            flat = [t for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
            if flat and all(id(t) in self.geom for t in flat) and \
                    len({self.geom[id(t)] for t in flat}) == 1:
                overrides = {"axis": -1} if type(layer).__name__ in AXIS_LAYERS else {}
                geom = self.geom[id(flat[0])]
                if not isinstance(layer, L.GroupNormalization):
                    return self.rows(self.clone(layer, args, kwargs, overrides), geom)
                return self.rows(self.group_norm(layer, flat[0], "on rows"), geom)
        args, kwargs = keras.tree.map_structure(
            lambda t: self.to_native(t) if isinstance(t, keras.KerasTensor) else t, (args, kwargs))
        if single:
            x = args[0]
            if _group_norm_ok(layer, x):
                return self.group_norm(layer, x)
            if type(layer) in (L.MaxPooling3D, L.AveragePooling3D):
                y = self.native_pool3d(layer, x)
                if y is not None:
                    return y
            if isinstance(layer, (LowRankConv, RootConv)):
                return self.native_structured(layer, x)
            if type(layer) in (L.Conv2D, L.Conv3D) and layer.groups > 1 and (
                    self.target == "edgetpu" or layer.rank == 3):
                return self.native_grouped_conv(layer, x)
        return self.clone(layer, args, kwargs)

    def channelwise(self, layer, args):
        name = type(layer).__name__
        if not _builtin(layer) or name not in CHANNELWISE | AXIS_LAYERS:
            return False
        if name in AXIS_LAYERS:
            axis = layer.axis
            axis = list(axis) if isinstance(axis, (list, tuple)) else [axis]
            return len(axis) == 1 and axis[0] in (-1, 4)
        return True

    def clone(self, layer, args, kwargs, overrides=None):
        if not isinstance(layer, keras.layers.Layer):  # a bare keras op: stateless, reuse
            return layer(*args, **kwargs)
        key = (id(layer), tuple(sorted((overrides or {}).items())))
        new = self.clones.get(key)
        fresh = new is None
        if fresh:
            config = layer.get_config()
            config.update(overrides or {})
            if isinstance(layer, keras.Model):
                new = keras.models.clone_model(layer)
            else:
                new = type(layer).from_config(config)
            self.clones[key] = new
        y = new(*args, **kwargs)
        if fresh and layer.weights:
            new.set_weights(layer.get_weights())
        return y

    def group_norm(self, layer, x, where=""):
        """keras GroupNormalization -> GroupNorm (MEAN/SUB/MUL/RSQRT/ADD: all int8)."""
        c = x.shape[-1]
        groups = c if layer.groups == -1 else layer.groups
        norm = GroupNorm(groups, layer.epsilon, layer.center, layer.scale,
                         name=self.name("norm"), dtype=layer.dtype_policy)
        y = norm(x)
        norm.set_weights(layer.get_weights())
        kind = "instance norm" if groups == c else f"{groups} groups"
        self.note(layer, "builtin_norm", f"{kind} as MEAN/SUB/MUL/RSQRT/ADD"
                  + (f" {where}" if where else ""))
        return y

    # ------------------------------------------------------ native layout (any rank)
    def channel_slices(self, x, sizes, spatial, channels_last=True):
        """Split channels with Reshape + Cropping2D + Reshape (no Lambda, no SPLIT op)."""
        if len(sizes) == 1:
            return [x]
        c, s = sum(sizes), math.prod(spatial)
        flat = self.op(L.Reshape, "flat", x, (s, c, 1) if channels_last else (c, s, 1))
        pieces, start = [], 0
        for i, n in enumerate(sizes):
            crop = (start, c - start - n)
            crop = ((0, 0), crop) if channels_last else (crop, (0, 0))
            piece = self.op(L.Cropping2D, f"slice{i}", flat, crop)
            shape = (*spatial, n) if channels_last else (n, *spatial)
            pieces.append(self.op(L.Reshape, f"piece{i}", piece, shape))
            start += n
        return pieces

    def pad_native(self, x, pads, data_format, tag):
        rank = len(pads)
        grow = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
        cut = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in pads)
        for cls, amount, what in ((PAD, grow, "pad"), (CROP, cut, "crop")):
            if any(a or b for a, b in amount):
                arg = amount[0] if rank == 1 else amount
                kw = {} if rank == 1 else {"data_format": data_format}
                x = self.op(cls[rank], f"{tag}_{what}", x, arg, **kw)
        return x

    def conv_native(self, x, kernel, bias, tag, padding="valid", strides=1, dilation=1,
                    data_format="channels_last", groups=1, activation=None):
        rank = kernel.ndim - 2
        if not isinstance(padding, str):
            x, padding = self.pad_native(x, padding, data_format, tag), "valid"
        kw = {} if rank == 1 else {"data_format": data_format}
        return self.op(CONV[rank], tag, x, kernel.shape[-1], kernel.shape[:rank],
                       strides=strides, padding=padding, dilation_rate=dilation, groups=groups,
                       use_bias=bias is not None, activation=activation, weights=[kernel, bias],
                       **kw)

    def grouped(self, x, groups, kernel, bias, conv, spatial, channels_last=True, act=None):
        """Split + per-group `conv(piece, kernel, bias, tag)` + Concatenate."""
        cin, f = kernel.shape[-2] * groups, kernel.shape[-1]
        pieces = self.channel_slices(x, [cin // groups] * groups, spatial, channels_last)
        fg = f // groups
        outs = [conv(p, kernel[..., g * fg:(g + 1) * fg],
                     None if bias is None else bias[g * fg:(g + 1) * fg], f"g{g}")
                for g, p in enumerate(pieces)]
        y = outs[0] if groups == 1 else self.op(L.Concatenate, "concat", outs,
                                                 axis=-1 if channels_last else 1)
        if not _is_linear(act):
            y = self.op(L.Activation, "act", y, act)
        return y

    def native_pool3d(self, layer, x):
        """3D pooling (TFLite has no MAX_POOL_3D / AVERAGE_POOL_3D) as 2D pooling over
        (D, H) on [N, D, H, W*C], then over W on [N, D'*H', W, C]; exact for windows that
        do not overlap (strides = pool_size), any batch."""
        p, shape = tuple(layer.pool_size), tuple(x.shape)
        if tuple(layer.strides) != p or layer.data_format != "channels_last" or \
                None in shape[1:]:
            why = ("only non-overlapping windows (strides = pool_size) on a channels-last "
                   f"volume of static size; received pool_size={p}, strides="
                   f"{tuple(layer.strides)} on {shape}")
            self.report(layer.name, type(layer).__name__, f"not lowered to 2D pooling: {why}")
            return None
        cls = L.MaxPooling2D if type(layer) is L.MaxPooling3D else L.AveragePooling2D
        _, d, h, w, c = shape
        t = x
        if p[:2] != (1, 1):
            t = self.op(L.Reshape, "dh_view", t, (d, h, w * c))
            t = self.op(cls, "dh", t, p[:2], padding=layer.padding)
            d, h = t.shape[1], t.shape[2]
        if p[2] != 1:
            t = self.op(L.Reshape, "w_view", t, (d * h, w, c))
            t = self.op(cls, "w", t, (1, p[2]), padding=layer.padding)
            w = t.shape[2]
        self.note(layer, "builtin_pool", f"{p} pooling as 2D pooling over (D, H), then W")
        return self.op(L.Reshape, "volume", t, (d, h, w, c))

    def native_grouped_conv(self, layer, x):
        cl = layer.data_format == "channels_last"
        spatial = tuple(x.shape[1:-1] if cl else x.shape[2:])
        if None in spatial:
            self.report(layer.name, type(layer).__name__, "grouped conv with dynamic spatial "
                        "dims cannot be split into per-group convs")
            return self.clone(layer, [x], {})
        w = layer.get_weights()

        def conv(p, k, b, tag):
            return self.conv_native(p, k, b, tag, layer.padding, layer.strides,
                                    layer.dilation_rate, layer.data_format)

        self.note(layer, "split_groups", f"{layer.groups} groups -> slices + "
                  f"{layer.groups} {type(layer).__name__} + Concatenate")
        return self.grouped(x, layer.groups, w[0], w[1] if layer.use_bias else None, conv,
                            spatial, cl, layer.activation)

    def native_structured(self, layer, x):
        df, rank = layer.data_format, layer.rank
        cl = df == "channels_last"
        spatial = tuple(x.shape[1:-1] if cl else x.shape[2:])
        axis = -1 if cl else 1
        dec = layer.decompose(x.shape)
        if isinstance(layer, RootConv):
            (step,) = dec.steps
            kernel, bias = _numpy(step.kernel), _numpy(step.bias)
            split = layer.groups > 1 and (rank == 3 or self.target == "edgetpu")
            if split and None in spatial:
                self.report(layer.name, type(layer).__name__, "grouped conv with dynamic "
                            "spatial dims cannot be split into per-group convs")
                split = False
            if split:
                def conv(p, k, b, tag):
                    return self.conv_native(p, k, b, tag, layer.padding, layer.strides,
                                            layer.dilation_rate, df)
                y = self.grouped(x, layer.groups, kernel, bias, conv, spatial, cl)
                what, pass_name = f"{layer.groups} groups -> slices + per-group convs", "split_groups"
            else:
                y = self.conv_native(x, kernel, bias, "conv", layer.padding, layer.strides,
                                     layer.dilation_rate, df, groups=layer.groups)
                what, pass_name = f"one Conv{rank}D(groups={layer.groups})", "builtin_structured"
        else:
            y, what, pass_name = self.native_lowrank(dec, x, axis), \
                f"{len(dec.steps)} members", "builtin_structured"
        y = self.finish(dec, y, lambda t, k, b: self.conv_native(t, k, b, "combine",
                                                                     data_format=df))
        self.note(layer, pass_name, what + (" + 1x1 combine" if layer.combine else ""))
        return y

    def native_lowrank(self, dec, x, axis):
        """The parallel or sequential steps of a low-rank `Decomposition`."""
        def conv(t, i, step):
            return self.conv_native(t, _numpy(step.kernel), _numpy(step.bias), f"m{i}",
                                    step.padding, step.strides, step.dilation_rate,
                                    dec.data_format)
        if dec.sequential:
            for i, step in enumerate(dec.steps):
                x = conv(x, i, step)
            return x
        outs = [conv(x, i, step) for i, step in enumerate(dec.steps)]
        return outs[0] if len(outs) == 1 else self.op(L.Concatenate, "concat", outs, axis=axis)

    def finish(self, dec, y, conv1):
        """Combination conv, then activation, of a `Decomposition`."""
        if dec.combine is not None:
            y = conv1(y, _numpy(dec.combine.kernel), _numpy(dec.combine.bias))
        if not _is_linear(dec.activation):
            y = self.op(L.Activation, "act", y, dec.activation)
        return y

    # ------------------------------------------------------------ row layout (3D)
    def pad_rows(self, x, pads, tag):
        """Zero-pad (or crop, negative) a rows tensor along D, H and W."""
        (d, h, w), c = self.geom[id(x)], x.shape[-1]
        for axis, (lo, hi) in enumerate(pads):
            if lo == 0 and hi == 0:
                continue
            amount = ((max(lo, 0), max(hi, 0)), (max(-lo, 0), max(-hi, 0)))
            n = (d, h, w)[axis] + lo + hi
            view, back = [((d, h * w, c), (n * h, w, c)), ((d, h, w * c), (d * n, w, c)),
                          (None, None)][axis]
            t = x if view is None else self.op(L.Reshape, f"{tag}_view{axis}", x, view)
            for cls, (a, b) in zip((L.ZeroPadding2D, L.Cropping2D), amount):
                if a or b:
                    spec = ((a, b), (0, 0)) if axis == 0 else ((0, 0), (a, b))
                    t = self.op(cls, f"{tag}_{cls.__name__[:4].lower()}{axis}", t, spec)
            x = t if back is None else self.op(L.Reshape, f"{tag}_back{axis}", t, back)
            d, h, w = [n if i == axis else v for i, v in enumerate((d, h, w))]
            self.rows(x, (d, h, w))
        return x

    def conv_rows(self, x, kernel, bias, pads, tag, activation=None):
        """Exact stride-1 conv3d of a rows tensor with 2D layers (pads may be negative)."""
        x = self.pad_rows(x, pads, tag)
        (d, h, w), c = self.geom[id(x)], x.shape[-1]
        kd, kh, kw, _, f = kernel.shape
        do, ho, wo = d - kd + 1, h - kh + 1, w - kw + 1
        if min(do, ho, wo) < 1:
            raise ValueError(f"kernel {kernel.shape[:3]} larger than the padded volume {d, h, w}")
        conv = dict(use_bias=bias is not None, activation=activation)
        if kd > 1 and kh == kw == 1:  # (k, 1, 1): a (k, 1) Conv2D over [1, D, H*W, C]
            t = self.op(L.Reshape, f"{tag}_depth", x, (d, h * w, c))
            t = self.op(L.Conv2D, f"{tag}_conv", t, f, (kd, 1), weights=[kernel[:, 0], bias],
                        **conv)
            return self.rows(self.op(L.Reshape, f"{tag}_rows", t, (do * h, w, f)), (do, h, w))
        if kd > 1:  # depth taps side by side on channels, one (kh, kw) conv sums them
            t = self.op(L.Reshape, f"{tag}_depth", x, (d, h * w, c))
            taps = [self.op(L.Reshape, f"{tag}_tap{i}_rows",
                            self.op(L.Cropping2D, f"{tag}_tap{i}", t, ((i, kd - 1 - i), (0, 0))),
                            (do * h, w, c)) for i in range(kd)]
            x = self.op(L.Concatenate, f"{tag}_taps", taps, axis=-1)
            k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kd * c, f)
        else:
            k2 = kernel[0]
        if kh > 1:  # rows of the next slice only reach outputs that are cropped below
            x = self.op(L.ZeroPadding2D, f"{tag}_tail", x, ((0, kh - 1), (0, 0)))
        y = self.op(L.Conv2D, f"{tag}_conv", x, f, (kh, kw), weights=[k2, bias], **conv)
        if kh > 1:
            y = self.op(L.Reshape, f"{tag}_slices", y, (do, h, wo * f))
            y = self.op(L.Cropping2D, f"{tag}_crop", y, ((0, 0), (0, kh - 1)))
            y = self.op(L.Reshape, f"{tag}_rows", y, (do * ho, wo, f))
        return self.rows(y, (do, ho, wo))

    def scan(self, model):
        _scan(self, model)

    def grouped_rows(self, x, groups, kernel, bias, pads, activation=None):
        """Grouped conv3d on rows: pad once, then slices + per-group convs + Concatenate."""
        x = self.pad_rows(x, pads, "pad")
        geom = self.geom[id(x)]
        y = self.grouped(x, groups, kernel, bias, lambda p, k, b, tag: self.conv_rows(
            self.rows(p, geom), k, b, ((0, 0),) * 3, tag, activation), (geom[0] * geom[1], geom[2]))
        return self.rows(y, _out_geom(geom, kernel.shape[:3], ((0, 0),) * 3))


# Row-layout handlers: (lowering, layer, rows tensor) -> rows tensor, or a str saying why not.
def _plain_ok(layer):
    if layer.data_format != "channels_last":
        return "data_format='channels_first'"
    if max(layer.strides) != 1 or max(layer.dilation_rate) != 1:
        return (f"strides={tuple(layer.strides)}, dilation_rate={tuple(layer.dilation_rate)} "
                "(only stride 1, dilation 1 become 2D ops)")
    return None


def _conv_pads(kernel_size, padding):
    return tuple(_same_pads(k) if padding == "same" else (0, 0) for k in kernel_size)


def _rows_conv3d(low, layer, x):
    why = _plain_ok(layer)
    if why:
        return why
    w = layer.get_weights()
    kernel, bias = w[0], (w[1] if layer.use_bias else None)
    pads = _conv_pads(layer.kernel_size, layer.padding)
    if layer.groups > 1:
        y = low.grouped_rows(x, layer.groups, kernel, bias, pads, layer.activation)
        detail = f"{layer.groups} groups split; each "
    else:
        y = low.conv_rows(x, kernel, bias, pads, "conv", layer.activation)
        detail = ""
    low.note(layer, ROWS, detail + f"{tuple(layer.kernel_size)} conv3d as 2D convs on rows")
    return y


def _out_geom(geom, kernel_size, pads):
    return tuple(n + lo + hi - k + 1 for n, k, (lo, hi) in zip(geom, kernel_size, pads))


def _rows_root(low, layer, x):
    why = _plain_ok(layer)
    if why:
        return why
    pads = _conv_pads(layer.kernel_size, layer.padding)
    out = _out_geom(low.geom[id(x)], layer.kernel_size, pads)
    dec = layer.decompose()
    (step,) = dec.steps
    y = low.grouped_rows(x, layer.groups, _numpy(step.kernel), _numpy(step.bias), pads)
    y = low.finish(dec, low.rows(y, out),
                   lambda t, k, b: low.conv_rows(t, k, b, ((0, 0),) * 3, "combine"))
    low.note(layer, ROWS, f"{layer.groups} groups split; {tuple(layer.kernel_size)} conv3d as "
             "2D convs on rows" + (" + 1x1 combine" if layer.combine else ""))
    return low.rows(y, out)


def _rows_lowrank(low, layer, x):
    why = _plain_ok(layer)
    if why:
        return why
    dec = layer.decompose((1, *low.geom[id(x)], x.shape[-1]))

    def conv(t, i, step):
        kernel = _numpy(step.kernel)
        pads = step.padding if not isinstance(step.padding, str) else \
            _conv_pads(kernel.shape[:3], step.padding)
        return low.conv_rows(t, kernel, _numpy(step.bias), pads, f"m{i}")
    if dec.sequential:
        for i, step in enumerate(dec.steps):
            x = conv(x, i, step)
        y = x
    else:
        outs = [conv(x, i, step) for i, step in enumerate(dec.steps)]
        y = outs[0] if len(outs) == 1 else low.rows(
            low.op(L.Concatenate, "concat", outs, axis=-1), low.geom[id(outs[0])])
    out = low.geom[id(y)]
    y = low.finish(dec, y, lambda t, k, b: low.conv_rows(t, k, b, ((0, 0),) * 3, "combine"))
    shapes = ", ".join("x".join(map(str, s)) for s, _ in layer.members)
    low.note(layer, ROWS, f"members {shapes} as 2D convs on rows"
             + (" + 1x1 combine" if layer.combine else ""))
    return low.rows(y, out)


def _rows_pool(low, layer, x):
    (d, h, w), c = low.geom[id(x)], x.shape[-1]
    p = tuple(layer.pool_size)
    if tuple(layer.strides) != p or layer.data_format != "channels_last" or \
            any(n % k for n, k in zip((d, h, w), p)):
        return (f"pool_size={p}, strides={tuple(layer.strides)} on {(d, h, w)}: only "
                "non-overlapping windows that tile the volume become 2D pooling")
    cls = L.MaxPooling2D if "Max" in type(layer).__name__ else L.AveragePooling2D
    if p[1:] != (1, 1):  # within slices: H divisible, so windows never cross slices
        x = low.op(cls, "hw", x, p[1:])
        h, w = h // p[1], w // p[2]
    if p[0] != 1:
        t = low.op(L.Reshape, "depth", x, (d, h * w, c))
        t = low.op(cls, "d", t, (p[0], 1))
        d //= p[0]
        x = low.op(L.Reshape, "rows", t, (d * h, w, c))
    low.note(layer, ROWS, f"{p} pooling as 2D pooling within, then across slices")
    return low.rows(x, (d, h, w))


def _rows_upsample(low, layer, x):
    (d, h, w), c = low.geom[id(x)], x.shape[-1]
    s = tuple(layer.size)
    if layer.data_format != "channels_last":
        return "data_format='channels_first'"
    # Nearest = each row / column / slice side by side k times: Reshape + Concatenate +
    # Reshape. (UpSampling2D emits 5D TILE tensors; Resizing's preprocessing call
    # defaults to training=True, which leaks into later BatchNormalization layers.)
    steps = [(s[1], (d * h, 1, w * c), lambda k: (d * h * k, w, c)),
             (s[2], (d * h * s[1] * w, 1, c), lambda k: (d * h * s[1], w * k, c)),
             (s[0], (d, 1, h * s[1] * w * s[2] * c), lambda k: (d * k * h * s[1], w * s[2], c))]
    for axis, (k, view, back) in zip("hwd", steps):
        if k > 1:
            t = low.op(L.Reshape, f"{axis}_view", x, view)
            t = low.op(L.Concatenate, f"{axis}_repeat", [t] * k, axis=2)
            x = low.op(L.Reshape, f"{axis}_rows", t, back(k))
    low.note(layer, ROWS, f"{s} nearest upsampling as Reshape + Concatenate repeats")
    return low.rows(x, (d * s[0], h * s[1], w * s[2]))


def _rows_pad_crop(low, layer, x):
    if layer.data_format != "channels_last":
        return "data_format='channels_first'"
    sign = -1 if type(layer).__name__.startswith("Cropping") else 1
    amounts = layer.cropping if sign < 0 else layer.padding
    pads = tuple((sign * lo, sign * hi) for lo, hi in amounts)
    low.note(layer, ROWS, f"{type(layer).__name__} as 2D pad/crop on rows")
    return low.pad_rows(x, pads, "pad")


def _rows_global_pool(low, layer, x):
    if layer.data_format != "channels_last":
        return "data_format='channels_first'"
    cls = L.GlobalMaxPooling2D if "Max" in type(layer).__name__ else L.GlobalAveragePooling2D
    y = low.op(cls, "pool", x, keepdims=layer.keepdims)
    low.note(layer, ROWS, f"{type(layer).__name__} as {cls.__name__} on rows")
    return low.rows(y, (1, 1, 1)) if layer.keepdims else y


ROWS_HANDLERS = {
    "Conv3D": _rows_conv3d,
    "MaxPooling3D": _rows_pool,
    "AveragePooling3D": _rows_pool,
    "UpSampling3D": _rows_upsample,
    "ZeroPadding3D": _rows_pad_crop,
    "Cropping3D": _rows_pad_crop,
    "GlobalAveragePooling3D": _rows_global_pool,
    "GlobalMaxPooling3D": _rows_global_pool,
}


def _rows_handler(layer):
    if isinstance(layer, (RootConv, LowRankConv)):
        return None if layer.rank != 3 else (
            _rows_root if isinstance(layer, RootConv) else _rows_lowrank)
    if not _builtin(layer) or (type(layer).__name__ == "Conv3D" and type(layer) is not L.Conv3D):
        return None
    return ROWS_HANDLERS.get(type(layer).__name__)


def _walk(model, prefix=""):
    """(name, layer) of every layer, descending into nested models ("outer/inner")."""
    for layer in model.layers:
        yield prefix + layer.name, layer
        if isinstance(layer, keras.Model):  # not lowered inside: its layers are only checked
            yield from _walk(layer, f"{prefix}{layer.name}/")


def _scan(low, model):
    """Report what the target still cannot run in the lowered `model`."""
    for name, layer in _walk(model):
        cls = type(layer).__name__
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if not _builtin(layer):
            low.report(name, cls, f"{cls} is not a built-in Keras layer; no lowering "
                       "exists, so its ops may not be TFLite built-ins")
        elif isinstance(layer, L.Conv3D) and layer.groups > 1:
            low.report(name, cls, "grouped CONV_3D fails in the TFLite runtime")
        elif low.target == "edgetpu" and cls.endswith("3D"):
            low.report(name, cls, f"{cls} (a 3D op) is not supported by the Edge TPU")
        elif low.target == "edgetpu" and isinstance(layer, L.Conv2D) and layer.groups > 1:
            low.report(name, cls, "grouped convolution is not mapped by the Edge TPU")
    if low.target == "edgetpu":
        for v in non_unit_violations(model):
            low.report(v["layer"], v["class"], v["reason"])

