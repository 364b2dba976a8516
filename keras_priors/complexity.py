"""Parameters and multiply-accumulates (MACs) per layer, the papers' accounting.

MACs are the multiply-accumulates of one forward pass of one example through the conv
and fully connected layers (biases, normalisation, pooling and activations cost none);
parameters are all weights, trainable or not (so BatchNorm's moving statistics count, as
in `model.summary()`).

>>> import keras
>>> from keras_priors import complexity
>>> inputs = keras.Input((32, 32, 3))
>>> model = keras.Model(inputs, keras.layers.Conv2D(8, 3, padding="same")(inputs))
>>> p = complexity.profile(model, verbose=False)
>>> p.total_params, p.total_macs
(224, 221184)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import keras

__all__ = ["Call", "Profile", "Row", "format_count", "functional", "input_layers",
           "layer_macs", "profile", "walk"]


@dataclass
class Row:
    """One line of a profile: a layer (depth 0), or a part of one (depth >= 1)."""

    name: str
    type: str
    output_shape: tuple
    params: int
    macs: int | None
    depth: int = 0


@dataclass
class Profile:
    """Rows and totals of `profile(model)`; `str(profile)` is the printed table."""

    name: str
    rows: list = field(default_factory=list)
    total_params: int = 0
    total_macs: int = 0
    unknown: list = field(default_factory=list)  # layers with weights but no MAC rule

    @property
    def layers(self):
        """The top-level rows only (depth 0)."""
        return [r for r in self.rows if r.depth == 0]

    def to_dict(self):
        return {
            "name": self.name,
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "unknown": list(self.unknown),
            "rows": [asdict(r) for r in self.rows],
        }

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    def table(self, line_length=98):
        widths = [int(line_length * f) for f in (0.42, 0.24, 0.16)]
        widths.append(line_length - sum(widths))
        header = ("Layer (type)", "Output Shape", "Param #", "MACs")

        def line(cells):
            left = [c[: w - 1].ljust(w) if i < 2 else c.rjust(w - 1) + " " for i, (c, w) in
                    enumerate(zip(cells, widths))]
            return "".join(left).rstrip()

        out = [f'Profile: "{self.name}"', "-" * line_length, line(header), "=" * line_length]
        for r in self.rows:
            label = "  " * r.depth + ("└ " if r.depth else "") + f"{r.name} ({r.type})"
            shape = "(" + ", ".join("None" if d is None else str(d) for d in r.output_shape) + ")"
            macs = "?" if r.macs is None else f"{r.macs:,}"
            out.append(line((label, shape, f"{r.params:,}", macs)))
        out.append("=" * line_length)
        out.append(f" Total params: {self.total_params:,} ({format_count(self.total_params)})")
        out.append(f" Total MACs: {self.total_macs:,} ({format_count(self.total_macs)}MACs)")
        if self.unknown:
            out.append(f" No MAC rule for (counted as 0): {', '.join(self.unknown)}")
        out.append("-" * line_length)
        return "\n".join(out)

    def __str__(self):
        return self.table()


def format_count(n):
    """12_345_678 -> '12.35 M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} "


# ------------------------------------------------------------------ MAC rules
_FREE = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.PReLU,
    keras.layers.Embedding,
)


def _spatial(shape, data_format):
    shape = tuple(shape)
    return shape[1:-1] if data_format == "channels_last" else shape[2:]


def _channels(shape, data_format):
    return shape[-1] if data_format == "channels_last" else shape[1]


def _positions(shape):
    if any(d is None for d in shape):
        return None
    return math.prod(shape)


def layer_macs(layer, input_shape, output_shape):
    """MACs of one call of `layer`; `None` if the layer has weights but no rule."""
    conv_types = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    transpose = (
        keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose,
    )
    depthwise = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
    separable = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    if hasattr(layer, "conv_parts"):
        macs = [p.macs for p in layer.conv_parts(input_shape)]
        return None if None in macs else sum(macs)
    fmt = getattr(layer, "data_format", "channels_last")
    if isinstance(layer, separable):
        out = _positions(_spatial(output_shape, fmt))
        cin = _channels(input_shape, fmt)
        per = math.prod(layer.kernel_size) * cin * layer.depth_multiplier
        return None if out is None else out * (per + cin * layer.depth_multiplier * layer.filters)
    if isinstance(layer, depthwise):
        out = _positions(_spatial(output_shape, fmt))
        cin = _channels(input_shape, fmt)
        per = math.prod(layer.kernel_size) * cin * layer.depth_multiplier
        return None if out is None else out * per
    if isinstance(layer, transpose):
        positions = _positions(_spatial(input_shape, fmt))
        cin = _channels(input_shape, fmt)
        per = math.prod(layer.kernel_size) * cin * layer.filters
        return None if positions is None else positions * per
    if isinstance(layer, conv_types):
        out = _positions(_spatial(output_shape, fmt))
        cin = _channels(input_shape, fmt)
        per = math.prod(layer.kernel_size) * (cin // layer.groups) * layer.filters
        return None if out is None else out * per
    if isinstance(layer, keras.layers.Dense):
        positions = _positions(tuple(input_shape)[1:-1]) if len(input_shape) > 2 else 1
        return None if positions is None else positions * input_shape[-1] * layer.units
    if not layer.weights or isinstance(layer, _FREE):
        return 0
    return None


# --------------------------------------------------------------------- graph
@dataclass(frozen=True)
class Call:
    """One layer call of a functional graph: `layer(*args, **kwargs) -> outputs`, with the
    graph's own symbolic tensors (`inputs` are the tensors among the arguments)."""

    layer: object
    args: tuple
    kwargs: dict
    inputs: list
    outputs: list


def functional(model, what="this function"):
    """`model` as a functional graph: a Functional model itself, a built Sequential as a
    Functional model over the same layers (nothing is copied); else a ValueError."""
    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError):
            model = None
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        name = f" {model.name!r}" if isinstance(model, keras.Model) else ""
        raise ValueError(
            f"{what} needs a built Functional or Sequential model;{name} "
            f"({type(model).__name__}) has no layer graph. Build it on a keras.Input first."
        )
    return model


def input_layers(model):
    """The InputLayer of each of `model.inputs`, in order."""
    by_output = {id(op.output): op for op in model.operations
                 if isinstance(op, keras.layers.InputLayer)}
    return [by_output[id(x)] for x in model.inputs]


def walk(model):
    """Every layer call of a functional `model` (see `functional`) as a `Call`, inputs
    excluded, in an order where each call comes after the calls producing its arguments.

    The one graph walker of the package (profiles, lowering, the tfmot bridge). Keras has
    no public per-call view of a functional graph, so it reads `Functional._nodes_by_depth`,
    the order Keras itself runs the graph in (docs/export.md, "Internals we rely on").

    >>> inputs = keras.Input((8, 8, 3))
    >>> model = keras.Model(inputs, keras.layers.ReLU()(keras.layers.Conv2D(4, 3)(inputs)))
    >>> [(type(c.layer).__name__, tuple(c.outputs[0].shape)) for c in walk(model)]
    [('Conv2D', (None, 6, 6, 4)), ('ReLU', (None, 6, 6, 4))]
    """
    model = functional(model, "walk")
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or not node.operation:
                continue
            args, kwargs = node.arguments.args, node.arguments.kwargs
            inputs = [t for t in keras.tree.flatten((args, kwargs))
                      if isinstance(t, keras.KerasTensor)]
            yield Call(node.operation, tuple(args), dict(kwargs), inputs, list(node.outputs))


def _shape(tensors):
    shapes = [tuple(t.shape) for t in tensors if hasattr(t, "shape")]
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


def _calls(model):
    """(layer, input_shape, output_shape) for every layer call, layers in model order."""
    calls = {}
    for call in walk(functional(model, "profile")):
        calls.setdefault(id(call.layer), []).append(call)
    for layer in model.layers:
        for call in calls.get(id(layer), []):
            yield layer, _shape(call.inputs), _shape(call.outputs)


def _rows(model, depth, unknown):
    rows, params, macs = [], 0, 0
    for layer, in_shape, out_shape in _calls(model):
        if isinstance(layer, keras.Model) and hasattr(layer, "layers"):
            sub_rows, sub_params, sub_macs = _rows(layer, depth + 1, unknown)
            rows.append(Row(layer.name, type(layer).__name__, out_shape, sub_params, sub_macs, depth))
            rows.extend(sub_rows)
            params, macs = params + sub_params, macs + sub_macs
            continue
        m = layer_macs(layer, in_shape, out_shape)
        count = layer.count_params() if layer.built else 0
        rows.append(Row(layer.name, type(layer).__name__, out_shape, count, m, depth))
        if hasattr(layer, "conv_parts"):
            for part in layer.conv_parts(in_shape):
                rows.append(
                    Row(
                        part.name,
                        f"{'x'.join(map(str, part.kernel_size))} conv"
                        + (f", {part.groups} groups" if part.groups > 1 else ""),
                        (in_shape[0], *part.output_shape),
                        part.params,
                        part.macs,
                        depth + 1,
                    )
                )
        if m is None:
            unknown.append(layer.name)
        params += count
        macs += m or 0
    return rows, params, macs


def profile(model, verbose=True, print_fn=None, line_length=98):
    """Per-layer parameters and MACs of a built Functional or Sequential Keras model.

    Structured layers (anything with a `conv_parts` method) get one sub-row per inner
    convolution; nested models are expanded. Returns a `Profile`; prints its table when
    `verbose` (through `print_fn`, default `print`).
    """
    unknown = []
    rows, params, macs = _rows(model, 0, unknown)
    result = Profile(model.name, rows, params, macs, unknown)
    if verbose:
        (print_fn or print)(result.table(line_length))
    return result
