"""Edge TPU (Coral) compatibility of a converted .tflite, checked without the compiler.

The supported-op table below is data: TFLite builtin op name -> (the name Coral's table
uses, the restrictions it states, which of them this module checks). Source: "TensorFlow
models on the Edge TPU", section "Supported operations",
https://coral.ai/docs/edgetpu/models-intro/ (Edge TPU compiler / runtime 14-16).

Model-wide rules from the same page: every tensor is 8-bit quantized (int8/uint8; int32 is
allowed for biases and for constant shape / axis / padding operands), tensor sizes are
constant at compile time, a tensor has at most 3 dimensions larger than 1 (only the
innermost 3 may exceed 1, so the batch is 1), and the compiler partitions once: from the
first op it cannot map, that op and everything after it run on the CPU.

>>> check("model_int8.tflite")["partition"]["edgetpu_ops"]   # doctest: +SKIP
12
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SOURCE = "https://coral.ai/docs/edgetpu/models-intro/#supported-operations"

# TFLite builtin -> (Coral's name, restrictions as documented, restrictions checked here)
SUPPORTED_OPS = {
    "ADD": ("Add", "", ""),
    "AVERAGE_POOL_2D": ("AveragePool2d", "No fused activation function.",
                        "fused activation"),
    "CONCATENATION": ("Concatenation",
                      "No fused activation function. If any input is a compile-time constant "
                      "tensor, there must be only 2 inputs, and this constant tensor must be "
                      "all zeroes (effectively, a zero-padding op).",
                      "fused activation; constant inputs (count and all-zero)"),
    "CONV_2D": ("Conv2d", "Must use the same dilation in x and y dimensions.",
                "dilation; filter groups (grouped CONV_2D is not in the table)"),
    "DEPTHWISE_CONV_2D": ("DepthwiseConv2d",
                          "Must use the same dilation in x and y dimensions.", "dilation"),
    "EXPAND_DIMS": ("ExpandDims", "", ""),
    "FULLY_CONNECTED": ("FullyConnected",
                        "Only the default format is supported for fully-connected weights. "
                        "Output tensor is one-dimensional.",
                        "weights format; output has one non-unit dimension"),
    "L2_NORMALIZATION": ("L2Normalization", "", ""),
    "LOGISTIC": ("Logistic", "", ""),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": ("LSTM", "Unidirectional LSTM only.", ""),
    "MAXIMUM": ("Maximum", "", ""),
    "MAX_POOL_2D": ("MaxPool2d", "No fused activation function.", "fused activation"),
    "MEAN": ("Mean",
             "No reduction in batch dimension. If a z-reduction, the z-dimension must be "
             "multiple of 4.", "batch axis; z-reduction size"),
    "MINIMUM": ("Minimum", "", ""),
    "MUL": ("Mul", "", ""),
    "PACK": ("Pack", "No packing in batch dimension.", "batch axis"),
    "PAD": ("Pad", "No padding in batch dimension.", "batch padding"),
    "PRELU": ("PReLU", "Alpha must be 1-dimensional (only the innermost dimension can be "
                       ">1 size).", "alpha shape"),
    "QUANTIZE": ("Quantize", "", ""),
    "REDUCE_MAX": ("ReduceMax", "Cannot operate on the batch dimension.", "batch axis"),
    "REDUCE_MIN": ("ReduceMin", "Cannot operate on the batch dimension.", "batch axis"),
    "RELU": ("ReLU", "", ""),
    "RELU6": ("ReLU6", "", ""),
    "RELU_N1_TO_1": ("ReLUN1To1", "", ""),
    "RESHAPE": ("Reshape", "Certain reshapes might not be mapped for large tensor sizes.", ""),
    "RESIZE_BILINEAR": ("ResizeBilinear",
                        "Input/output is a 3-dimensional tensor. Depending on input/output "
                        "size, this operation might not be mapped to the Edge TPU to avoid "
                        "loss in precision.", "3-dimensional input/output"),
    "RESIZE_NEAREST_NEIGHBOR": ("ResizeNearestNeighbor",
                                "Input/output is a 3-dimensional tensor. Depending on "
                                "input/output size, this operation might not be mapped to "
                                "the Edge TPU to avoid loss in precision.",
                                "3-dimensional input/output"),
    "RSQRT": ("Rsqrt", "", ""),
    "SLICE": ("Slice", "", ""),
    "SOFTMAX": ("Softmax", "Supports only 1-D input tensor with a max of 16,000 elements.",
                "one non-unit dimension, at most 16000 elements"),
    "SPACE_TO_DEPTH": ("SpaceToDepth", "", ""),
    "SPLIT": ("Split", "No splitting in batch dimension.", "batch axis"),
    "SQUARED_DIFFERENCE": ("SquaredDifference", "", ""),
    "SQUEEZE": ("Squeeze",
                "Supported only when input tensor dimensions that have leading 1s (that is, "
                "no relayout needed). For example input tensor with [y][x][z] = 1,1,10 or "
                "1,5,10 is ok. But [y][x][z] = 5,1,10 is not supported.",
                "squeezed dimensions are leading 1s"),
    "STRIDED_SLICE": ("StridedSlice",
                      "Supported only when all strides are equal to 1 (that is, effectively "
                      "a Stride op), and with ellipsis-axis-mask == 0, and new-axis-max == 0.",
                      "strides; ellipsis and new-axis masks"),
    "SUB": ("Sub", "", ""),
    "SUM": ("Sum", "Cannot operate on the batch dimension.", "batch axis"),
    "TANH": ("Tanh", "", ""),
    "TRANSPOSE": ("Transpose", "", ""),
    "TRANSPOSE_CONV": ("TransposeConv", "", ""),
}

# ops that take int32 operands by design: (op, operand position) -> what the operand is
_INT32_OPERANDS = {
    ("CONV_2D", 2): "bias", ("DEPTHWISE_CONV_2D", 2): "bias", ("FULLY_CONNECTED", 2): "bias",
    ("TRANSPOSE_CONV", 3): "bias",
}
_MAX_SOFTMAX = 16000
_OPTIONS = {
    "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
    "CONCATENATION": "ConcatenationOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
    "STRIDED_SLICE": "StridedSliceOptions", "SPLIT": "SplitOptions", "PACK": "PackOptions",
    "SQUEEZE": "SqueezeOptions",
}


class EdgeTPUError(ValueError):
    """A model that cannot be an Edge TPU model (float ops or tensors left after int8
    conversion); the message lists the offenders."""


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # older ai_edge_litert
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _operators(content):
    """The operators of subgraph 0 in execution order, read from the flatbuffer: (op name,
    input tensor indices, output tensor indices, builtin options as a dict)."""
    schema = _schema()
    model = schema.Model.GetRootAs(bytearray(content), 0)
    graph = model.Subgraphs(0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = names.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = code.CustomCode().decode()
        opts = {}
        cls_name = _OPTIONS.get(name)
        table = op.BuiltinOptions()
        if cls_name and table is not None:
            obj = getattr(schema, cls_name)()
            obj.Init(table.Bytes, table.Pos)
            for field in ("DilationHFactor", "DilationWFactor", "StrideH", "StrideW",
                          "FusedActivationFunction", "WeightsFormat", "EllipsisMask",
                          "NewAxisMask", "Axis", "NumSplits", "SqueezeDimsAsNumpy"):
                if hasattr(obj, field):
                    value = getattr(obj, field)()
                    opts[field] = value.tolist() if isinstance(value, np.ndarray) else value
        out.append((name, [int(t) for t in op.InputsAsNumpy()],
                    [int(t) for t in op.OutputsAsNumpy()], opts))
    return out


def _short(name, limit=60):
    """A readable tensor name: the first of a fused list, cut to `limit` characters."""
    name = (name or "").split(";")[0]
    return name if len(name) <= limit else "..." + name[-(limit - 3):]


def _non_unit(shape):
    return int(sum(1 for d in shape if d != 1))


def read_model(model_path=None, model_content=None):
    """Ops (execution order) and tensors of a .tflite, as plain dicts.

    Ops come from the flatbuffer (the order the interpreter runs them in); tensors from an
    interpreter without default delegates.
    """
    from .verify import interpreter

    if model_content is None:
        model_content = Path(model_path).read_bytes()
    interp = interpreter(model_content, delegates=False)
    tensors = {}
    for d in interp.get_tensor_details():
        tensors[d["index"]] = {
            "index": int(d["index"]), "name": d["name"], "dtype": np.dtype(d["dtype"]).name,
            "shape": [int(s) for s in d["shape"]],
            "shape_signature": [int(s) for s in d["shape_signature"]],
            "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1]),
        }
    ops = [{"index": i, "op": name, "inputs": [t for t in inputs if t >= 0],
            "outputs": outputs, "options": opts}
           for i, (name, inputs, outputs, opts) in enumerate(_operators(model_content))]
    graph_inputs = [int(d["index"]) for d in interp.get_input_details()]
    graph_outputs = [int(d["index"]) for d in interp.get_output_details()]
    produced = {t for op in ops for t in op["outputs"]}
    used = {t for op in ops for t in op["inputs"]} | produced
    for t in tensors.values():
        t["kind"] = ("input" if t["index"] in graph_inputs else "activation"
                     if t["index"] in produced else "constant" if t["index"] in used
                     else "scratch")
    constants = {}
    for idx, t in tensors.items():
        if t["kind"] == "constant" and t["dtype"] in ("int32", "int64") and np.prod(
                t["shape"] or [1]) <= 64:
            try:
                constants[idx] = np.array(interp.get_tensor(idx))
            except ValueError:
                pass
    return {"ops": ops, "tensors": tensors, "inputs": graph_inputs, "outputs": graph_outputs,
            "constants": constants, "interp": interp}


def _axes(model, op, position=1):
    if len(op["inputs"]) <= position:
        return None
    value = model["constants"].get(op["inputs"][position])
    if value is None:
        return None
    rank = len(model["tensors"][op["inputs"][0]]["shape"])
    return sorted({int(a) % rank for a in np.ravel(value)}) if rank else []


def _op_reasons(model, op):
    """Why an op would not map (empty: it maps, as far as the documentation tells)."""
    name, opts, tensors = op["op"], op["options"] or {}, model["tensors"]
    if name not in SUPPORTED_OPS:
        if name == "CONV_3D":
            return ["CONV_3D is not in the Edge TPU table (lower 3D convs to 2D first)"]
        if name == "DEQUANTIZE":
            return ["DEQUANTIZE is not in the Edge TPU table (a float section follows)"]
        return [f"{name} is not in the Edge TPU supported-op table"]
    reasons = []
    first_in = tensors[op["inputs"][0]] if op["inputs"] else None
    out = tensors[op["outputs"][0]] if op["outputs"] else None
    if opts.get("FusedActivationFunction") and name in ("AVERAGE_POOL_2D", "MAX_POOL_2D",
                                                        "CONCATENATION"):
        reasons.append(f"{name} has a fused activation (function id "
                       f"{opts['FusedActivationFunction']}); the table allows none")
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and opts:
        if opts.get("DilationHFactor", 1) != opts.get("DilationWFactor", 1):
            reasons.append(f"dilation differs in y and x ({opts['DilationHFactor']} vs "
                           f"{opts['DilationWFactor']})")
    if name == "CONV_2D" and len(op["inputs"]) > 1:
        in_ch = first_in["shape"][-1]
        filt = tensors[op["inputs"][1]]["shape"]
        if len(filt) == 4 and filt[-1] and in_ch != filt[-1]:
            groups = in_ch // filt[-1]
            reasons.append(f"grouped CONV_2D (groups={groups}) is not documented for the "
                           "Edge TPU, so it is counted as unsupported; export with "
                           "target='edgetpu' splits it into per-group CONV_2D + concatenation")
    if name == "CONCATENATION":
        const = [t for t in op["inputs"] if tensors[t]["kind"] == "constant"]
        if const:
            if len(op["inputs"]) != 2:
                reasons.append(f"a constant input among {len(op['inputs'])} inputs (only 2 "
                               "inputs are allowed then)")
            for t in const:
                try:
                    value = model["interp"].get_tensor(t)
                    if np.any(np.asarray(value, np.int64) != tensors[t]["zero_point"]):
                        reasons.append(f"constant input {tensors[t]['name']!r} is not all zeros")
                except ValueError:
                    pass
    if name == "FULLY_CONNECTED":
        if opts.get("WeightsFormat", 0) != 0:
            reasons.append("fully-connected weights are not in the default format")
        if out is not None and _non_unit(out["shape"]) > 1:
            reasons.append(f"output {out['shape']} is not one-dimensional")
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
        axes = _axes(model, op)
        if axes is not None and 0 in axes and len(first_in["shape"]) > 1:
            reasons.append(f"reduces over the batch dimension (axes {axes})")
        rank = len(first_in["shape"])
        if name == "MEAN" and axes is not None and rank >= 2 and rank - 1 in axes \
                and first_in["shape"][-1] % 4:
            reasons.append(f"z-reduction over {first_in['shape'][-1]} channels (must be a "
                           "multiple of 4)")
    if name == "PAD" and len(op["inputs"]) > 1:
        pads = model["constants"].get(op["inputs"][1])
        if pads is not None and pads.ndim == 2 and np.any(pads[0] != 0):
            reasons.append(f"pads the batch dimension ({pads[0].tolist()})")
    if name == "SPLIT" and op["inputs"]:
        axes = _axes(model, op, position=0)
        data = tensors[op["inputs"][1]] if len(op["inputs"]) > 1 else None
        if axes is not None and data is not None:
            rank = len(data["shape"])
            if rank and 0 in {a % rank for a in axes}:
                reasons.append("splits along the batch dimension")
    if name == "PACK" and opts.get("Axis", None) == 0:
        reasons.append("packs along the batch dimension")
    if name == "SOFTMAX" and first_in is not None:
        if _non_unit(first_in["shape"]) > 1:
            reasons.append(f"input {first_in['shape']} is not 1-D")
        if int(np.prod(first_in["shape"])) > _MAX_SOFTMAX:
            reasons.append(f"{int(np.prod(first_in['shape']))} elements (max {_MAX_SOFTMAX})")
    if name == "STRIDED_SLICE":
        if len(op["inputs"]) > 3:
            strides = model["constants"].get(op["inputs"][3])
            if strides is not None and np.any(strides != 1):
                reasons.append(f"strides {strides.tolist()} (all must be 1)")
        if opts.get("EllipsisMask", 0) or opts.get("NewAxisMask", 0):
            reasons.append("ellipsis or new-axis mask set")
    if name in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and first_in is not None:
        if len(first_in["shape"]) == 4 and first_in["shape"][0] != 1:
            reasons.append(f"input {first_in['shape']} is not 3-dimensional")
    if name == "PRELU" and len(op["inputs"]) > 1:
        alpha = tensors[op["inputs"][1]]["shape"]
        if _non_unit(alpha[:-1]) > 0:
            reasons.append(f"alpha {alpha} is not 1-dimensional")
    if name == "SQUEEZE" and first_in is not None:
        dims = opts.get("SqueezeDimsAsNumpy")
        shape = first_in["shape"]
        if isinstance(dims, list) and dims:
            rank = len(shape)
            squeezed = sorted(d % rank for d in dims)
            first_big = next((i for i, s in enumerate(shape) if s != 1), rank)
            if any(d > first_big for d in squeezed):
                reasons.append(f"squeezes dims {squeezed} of {shape} that are not leading 1s")
    return reasons


def _tensor_problems(model, op):
    """Model-wide tensor rules applied to the tensors an op reads and writes."""
    problems = []
    for pos, t in enumerate(op["inputs"]):
        problems += _check_tensor(model["tensors"][t], op["op"], pos, output=False)
    for t in op["outputs"]:
        problems += _check_tensor(model["tensors"][t], op["op"], None, output=True)
    return problems


def _check_tensor(t, op_name, position, output):
    out = []
    dtype = t["dtype"]
    if dtype not in ("int8", "uint8"):
        allowed = (dtype == "int32" and not output and (
            (op_name, position) in _INT32_OPERANDS or t["kind"] == "constant"))
        if not allowed:
            out.append(f"tensor {_short(t['name'])!r} is {dtype} (must be int8/uint8)")
    if t["kind"] == "constant":
        return out
    if any(s < 0 for s in t["shape_signature"]):
        out.append(f"tensor {_short(t['name'])!r} has a dynamic shape {t['shape_signature']}")
    if _non_unit(t["shape"]) > 3:
        out.append(f"tensor {_short(t['name'])!r} {t['shape']} has {_non_unit(t['shape'])} dimensions "
                   "larger than 1 (max 3)")
    elif len(t["shape"]) >= 4 and t["shape"][0] != 1:
        out.append(f"tensor {_short(t['name'])!r} {t['shape']} has batch {t['shape'][0]} (must be 1)")
    return out


def float_offenders(model):
    """Ops with a float operand or result and the float tensors they touch."""
    tensors, offenders = model["tensors"], []
    for op in model["ops"]:
        floats = [_short(tensors[t]["name"]) or f"#{t}" for t in op["inputs"] + op["outputs"]
                  if tensors[t]["dtype"].startswith("float")]
        if floats:
            offenders.append({"index": op["index"], "op": op["op"], "float_tensors": floats})
    return offenders


def run_compiler(path, timeout=300):
    """Run edgetpu_compiler on `path` when it is on PATH: -> {"ran", "message", "log"}."""
    exe = shutil.which("edgetpu_compiler")
    if exe is None:
        return {"ran": False, "message": "edgetpu_compiler was not run (not found on PATH)",
                "log": None}
    with tempfile.TemporaryDirectory() as out_dir:
        try:
            proc = subprocess.run([exe, "-s", "-o", out_dir, str(path)], capture_output=True,
                                  text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"ran": False, "message": f"edgetpu_compiler failed to run: {e}", "log": None}
        log = proc.stdout + proc.stderr
        for extra in Path(out_dir).glob("*.log"):
            log += "\n" + extra.read_text(errors="replace")
    return {"ran": True, "message": f"edgetpu_compiler exited with status {proc.returncode}",
            "returncode": proc.returncode, "log": log}


def check(model_path=None, model_content=None, run_compiler_if_found=True):
    """Edge TPU report of a .tflite: per-op status, tensor-rule violations, the predicted
    partition, and the compiler's log when `edgetpu_compiler` is installed.

    -> {"compatible", "ops": [{index, op, coral_name, maps, reasons, device}], "tensors":
    [violations], "partition": {...}, "float_ops": [...], "compiler": {...}, "source"}
    """
    model = read_model(model_path, model_content)
    ops_out, tensor_violations = [], []
    first_bad = None
    for op in model["ops"]:
        reasons = _op_reasons(model, op)
        problems = _tensor_problems(model, op)
        tensor_violations += [{"op_index": op["index"], "op": op["op"], "problem": p}
                              for p in problems]
        maps = not reasons and not problems
        if not maps and first_bad is None:
            first_bad = op["index"], op["op"], reasons + problems
        ops_out.append({
            "index": op["index"], "op": op["op"],
            "coral_name": SUPPORTED_OPS.get(op["op"], (None,))[0],
            "maps": maps, "reasons": reasons + problems,
            "device": "edgetpu" if first_bad is None else "cpu",
        })
    n = len(ops_out)
    if first_bad is None:
        partition = {"edgetpu_ops": n, "cpu_ops": 0, "first_unsupported": None,
                     "summary": f"all {n} ops map to the Edge TPU (one partition)"}
    else:
        idx, name, why = first_bad
        partition = {
            "edgetpu_ops": idx, "cpu_ops": n - idx,
            "first_unsupported": {"index": idx, "op": name, "reasons": why},
            "summary": (f"the compiler would cut the graph at op {idx} ({name}): "
                        + (f"ops 0..{idx - 1} on the Edge TPU, " if idx > 1 else
                           "op 0 on the Edge TPU, " if idx == 1 else "no op on the Edge TPU, ")
                        + f"ops {idx}..{n - 1} ({n - idx} ops) on the CPU, because "
                        + why[0] + (f" (and {len(why) - 1} more)" if len(why) > 1 else "")),
        }
    compiler = {"ran": False, "message": "edgetpu_compiler was not run (not found on PATH)",
                "log": None}
    if run_compiler_if_found and shutil.which("edgetpu_compiler"):
        if model_path is None:
            with tempfile.NamedTemporaryFile(suffix=".tflite", delete=False) as f:
                f.write(model_content)
            try:
                compiler = run_compiler(f.name)
            finally:
                Path(f.name).unlink(missing_ok=True)
        else:
            compiler = run_compiler(model_path)
    return {
        "compatible": first_bad is None,
        "ops": ops_out,
        "tensors": tensor_violations,
        "partition": partition,
        "parameter_cache": parameter_cache(model),
        "float_ops": float_offenders(model),
        "compiler": compiler,
        "source": SOURCE,
    }


PARAMETER_CACHE_BYTES = 8 * 2**20  # on-chip parameter memory of the Edge TPU, about 8 MiB


def parameter_cache(model):
    """Whether the constant tensors (weights, biases) fit the Edge TPU's on-chip parameter
    cache; what does not fit is streamed from host memory at every inference (slower)."""
    size = sum(int(np.prod(t["shape"] or [1])) * np.dtype(t["dtype"]).itemsize
               for t in model["tensors"].values() if t["kind"] == "constant")
    fits = size <= PARAMETER_CACHE_BYTES
    note = (f"parameters {size / 2**20:.2f} MiB "
            + ("fit the ~8 MiB on-chip cache" if fits else
               "exceed the ~8 MiB on-chip cache: the rest is streamed from host memory at "
               "every inference (slower); pipelining over several Edge TPUs splits them"))
    return {"parameter_bytes": size, "cache_bytes": PARAMETER_CACHE_BYTES, "fits": fits,
            "note": note}


def require_integer(model_path=None, model_content=None):
    """Raise EdgeTPUError if any op reads or writes a float tensor (int32 biases allowed)."""
    model = read_model(model_path, model_content)
    offenders = float_offenders(model)
    if offenders:
        lines = [f"  op {o['index']} {o['op']}: float tensors {o['float_tensors']}"
                 for o in offenders[:20]]
        more = f"\n  ... and {len(offenders) - 20} more" if len(offenders) > 20 else ""
        raise EdgeTPUError(
            f"target='edgetpu' needs a fully integer model, but {len(offenders)} op(s) still "
            "compute in float after int8 conversion:\n" + "\n".join(lines) + more
        )
    return model


def table_markdown():
    """The encoded table as Markdown (docs/export.md embeds it)."""
    rows = ["| TFLite op | Coral name | Documented restriction | Checked here |",
            "|---|---|---|---|"]
    for op, (coral, limits, checked) in sorted(SUPPORTED_OPS.items()):
        rows.append(f"| {op} | {coral} | {limits or '-'} | {checked or '-'} |")
    return "\n".join(rows)
