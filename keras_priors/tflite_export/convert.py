"""`export`: a Keras model, zoo name or .keras file -> a .tflite plus its ExportReport.

Steps: resolve the model (never modified) -> lower it for the target
(keras_priors.tflite_export.lowering) -> wrap it with a static batch-1 input -> convert
with tf.lite.TFLiteConverter (builtin ops only, never SELECT_TF_OPS) -> inspect ops and
tensors -> Edge TPU rules -> agreement with the Keras model and latency in the LiteRT
interpreter -> write the .tflite, the .json report and a .md summary atomically.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from .report import ExportReport

QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
TARGETS = ("cpu", "edgetpu")
IO_DTYPES = ("int8", "uint8")


def _choice(name, value, choices):
    if value not in choices:
        import difflib

        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}.{hint}")


def resolve_model(model, input_shape=None, weights=None, classes=None, **options):
    """-> (keras.Model, a description of the source, preprocessing mode or None)."""
    import keras

    zoo_only = {"weights": weights, "input_shape": input_shape, "classes": classes, **options}
    zoo_only = [k for k, v in zoo_only.items() if v is not None]
    if isinstance(model, keras.Model):
        if zoo_only:
            raise ValueError(f"{', '.join(zoo_only)} apply to zoo names only; this is already a "
                             "keras.Model")
        return model, model.name, None
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a keras.Model, a zoo name or a .keras file, received "
                         f"{type(model).__name__}")
    text = str(model)
    if text.endswith(".keras") or os.sep in text or Path(text).is_file():
        if zoo_only:
            raise ValueError(f"{', '.join(zoo_only)} apply to zoo names only; {text!r} is a "
                             "saved model, exported as it is")
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"model file {text!r} does not exist")
        from .. import layers  # noqa: F401  (registers the structured layers)

        return keras.saving.load_model(path, compile=False), str(path), None
    from .. import zoo

    spec = zoo.registry.get(text)
    built = zoo.load(text, weights=weights, input_shape=input_shape, classes=classes, **options)
    preprocessing = spec.preprocessing
    if weights is not None and weights in spec.weights:
        preprocessing = spec.weights[weights].preprocessing
    desc = text + (f" (weights {weights})" if weights else "")
    return built, desc, preprocessing


def _batch1(model):
    """A functional wrapper with a static batch of 1 (the source model is shared, not
    changed): static shapes for the Edge TPU and a plain batch-1 .tflite for the CPU."""
    import keras

    if len(model.inputs) != 1:
        raise ValueError(f"export handles single-input models; {model.name!r} has "
                         f"{len(model.inputs)} inputs")
    shape = tuple(model.inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(f"{model.name!r} has an input of unknown size {(None,) + shape}: build "
                         "it with a fixed input_shape (e.g. zoo.load(name, input_shape=...))")
    inp = keras.Input(shape, batch_size=1, name="input")
    out = model(inp, training=False)
    if isinstance(out, (list, tuple, dict)):
        raise ValueError(f"export handles single-output models; {model.name!r} has several")
    return keras.Model(inp, out, name=f"{model.name}_batch1")


def convert(model, quantization="none", representative=None, io_dtype="int8"):
    """TFLite flatbuffer bytes of a single-input Keras model at batch 1.

    `representative`: a zero-argument generator function yielding [float32 batch-1 array]
    (required for int8).
    """
    _choice("quantization", quantization, QUANTIZATIONS)
    _choice("io_dtype", io_dtype, IO_DTYPES)
    return convert_model(_batch1(model), quantization, representative, io_dtype)


def convert_model(model, quantization="none", representative=None, io_dtype="int8"):
    """TFLite bytes of `model` as it is (a Keras 3 or tf_keras model, its batch kept): the
    package's one TFLite converter. Builtin ops only (never SELECT_TF_OPS); "int8" is full
    integer (TFLITE_BUILTINS_INT8, `io_dtype` inputs and outputs), so conversion fails
    rather than leave a float op behind."""
    import tensorflow as tf

    _choice("quantization", quantization, QUANTIZATIONS)
    _choice("io_dtype", io_dtype, IO_DTYPES)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if representative is None:
            raise ValueError("quantization='int8' needs representative_data (an array of "
                             "example inputs, 'fashion_mnist', 'tfds:NAME' or a folder)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8 if io_dtype == "int8" else tf.uint8
        converter.inference_output_type = tf.int8 if io_dtype == "int8" else tf.uint8
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # the SavedModel export prints a summary; the int8 path warns that the float
            # input has no statistics, which the int8 input type makes moot
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as e:  # ConverterError and friends: name the ops TFLite lacks
        missing = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op",
                                        str(e))))
        if missing:
            raise ConversionError(
                f"TFLite has no builtin op for {', '.join(missing)} (quantization="
                f"{quantization!r}); SELECT_TF_OPS is never added, so lower these layers first "
                "(keras_priors.tflite_export.lowering, target='edgetpu' lowers 3D layers)"
            ) from e
        raise ConversionError(f"TFLite conversion failed: {str(e)[:2000]}") from e


class ConversionError(ValueError):
    """The TFLite converter refused the model; the message names what it lacks."""


def _settings(quantization, io_dtype):
    base = {"api": "tf.lite.TFLiteConverter.from_keras_model (batch-1 functional wrapper)",
            "supported_ops": ["TFLITE_BUILTINS"]}
    if quantization == "fp16":
        base |= {"optimizations": ["DEFAULT"], "supported_types": ["float16"]}
    elif quantization == "dynamic":
        base |= {"optimizations": ["DEFAULT"], "representative_dataset": False}
    elif quantization == "int8":
        base |= {"optimizations": ["DEFAULT"], "representative_dataset": True,
                 "supported_ops": ["TFLITE_BUILTINS_INT8"],
                 "inference_input_type": io_dtype, "inference_output_type": io_dtype}
    return base


def inspect(model_content):
    """Op counts, dtype counts over graph tensors, float tensor names, I/O details."""
    from . import edgetpu

    m = edgetpu.read_model(model_content=model_content)
    ops = Counter(op["op"] for op in m["ops"])
    graph = [t for t in m["tensors"].values() if t["kind"] != "scratch"]
    dtypes = Counter(t["dtype"] for t in graph)
    floats = [t["name"] or f"#{t['index']}" for t in graph if t["dtype"].startswith("float")]

    def io(indices):
        return [{"name": m["tensors"][i]["name"], "dtype": m["tensors"][i]["dtype"],
                 "shape": m["tensors"][i]["shape"], "scale": m["tensors"][i]["scale"],
                 "zero_point": m["tensors"][i]["zero_point"]} for i in indices]

    return dict(ops), dict(dtypes), floats, {"inputs": io(m["inputs"]),
                                             "outputs": io(m["outputs"])}


def _versions():
    import importlib.metadata as md

    out = {}
    for pkg in ("tensorflow", "keras", "ai-edge-litert"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def export(model, path, quantization="none", representative_data=None, target="cpu",
           verify=True, io_dtype="int8", force=False, *, calibration_samples=100,
           verify_data=None, verify_samples=64, input_shape=None, weights=None, classes=None,
           preprocessing=None, report_path=None, latency=True, latency_repeats=20, seed=0,
           **options) -> ExportReport:
    """Convert `model` to a .tflite at `path` and report on it.

    model: a keras.Model, a zoo name (with `weights`, `input_shape`, `classes`, `options`)
        or the path of a .keras file. The source model is never modified.
    quantization: "none" (float32), "fp16" (float16 weights), "dynamic" (int8 weights,
        float activations) or "int8" (full integer; needs `representative_data`).
    representative_data: numpy array (N, *input_shape), "fashion_mnist", "tfds:NAME", a
        folder of images, or a folder of NIfTI cases for 3D models (calibration.py);
        `calibration_samples` of it are used.
    target: "cpu" or "edgetpu" (int8 only; fails if anything stays float).
    verify: compare with the Keras model on `verify_data` (default: the calibration data,
        else random normal inputs) and time the interpreter (XNNPACK, 1 and 2 threads).
    io_dtype: int8 or uint8 inputs/outputs for int8 models.
    force: replace an existing output (otherwise FileExistsError naming it).

    Writes `path`, its report `path` with .json (or `report_path`) and a .md summary.
    """
    _choice("quantization", quantization, QUANTIZATIONS)
    _choice("target", target, TARGETS)
    _choice("io_dtype", io_dtype, IO_DTYPES)
    for name, value in (("calibration_samples (--calib-samples)", calibration_samples),
                        ("verify_samples (--verify-samples)", verify_samples),
                        ("latency_repeats", latency_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, received {value!r}")
    if io_dtype != "int8" and quantization != "int8":
        raise ValueError(f"io_dtype={io_dtype!r} (--io-dtype) applies to quantization='int8' "
                         f"only; a {quantization!r} model keeps float32 inputs and outputs")
    if verify_data is not None and not verify:
        raise ValueError("verify_data (--verify-data) is given but verify=False (--no-verify) "
                         "skips the agreement check that would use it")
    if target == "edgetpu" and quantization != "int8":
        raise ValueError(f"target='edgetpu' needs quantization='int8' (full integer); received "
                         f"quantization={quantization!r}")
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"output path must end with .tflite, received {str(path)!r}")
    report_path = Path(report_path) if report_path else path.with_suffix(".json")
    md_path = report_path.with_suffix(".md")
    if report_path.resolve() in (path.resolve(), md_path.resolve()):
        raise ValueError(
            f"the report path {str(report_path)!r} (--report) would overwrite "
            + (f"the model {str(path)!r}" if report_path.resolve() == path.resolve() else
               f"its own Markdown summary {str(md_path)!r}")
            + "; give the JSON report a path of its own, ending with .json")
    if not force:
        for p in (path, report_path, md_path):
            if p.exists():
                raise FileExistsError(f"{p} already exists; pass force=True (--force) to "
                                      "replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder {path.parent} does not exist")

    from . import calibration, edgetpu, lowering
    from . import verify as verify_lib

    source, desc, zoo_pre = resolve_model(model, input_shape, weights, classes, **options)
    preprocessing = preprocessing or zoo_pre
    native_shape = tuple(int(d) for d in source.input_shape[1:]) if all(
        d is not None for d in source.input_shape[1:]) else None
    if native_shape is None:
        raise ValueError(f"{desc} has an input of unknown size {source.input_shape}; pass "
                         "input_shape")
    notes = []

    calib = None
    if representative_data is not None:
        calib = calibration.representative_array(representative_data, native_shape,
                                                 calibration_samples, preprocessing, seed)
    elif quantization == "int8":
        raise ValueError("quantization='int8' needs representative_data (an array of example "
                         "inputs, 'fashion_mnist', 'tfds:NAME' or a folder)")

    lowered = lowering.lower(source, target=target, batch_size=1)  # convert() runs batch 1
    rep = None
    if quantization == "int8":
        rep = calibration.generator(calib, lowered.to_lowered_input
                                    if lowered.input_layout != "native" else None)
    content = convert(lowered.model, quantization, rep, io_dtype)

    ops, dtypes, floats, io_details = inspect(content)
    if target == "edgetpu":
        edgetpu.require_integer(model_content=content)
    # the compiler (when installed) only makes sense for full-integer models
    et = edgetpu.check(model_content=content, run_compiler_if_found=quantization == "int8")
    if quantization != "int8" and shutil.which("edgetpu_compiler"):
        et["compiler"]["message"] = (f"edgetpu_compiler was not run (quantization="
                                     f"{quantization!r}; it compiles int8 models only)")

    report = ExportReport(
        source=desc, output=str(path), quantization=quantization, target=target,
        io_dtype=io_dtype if quantization == "int8" else None,
        input_shape=list(native_shape),
        tflite_input_shape=io_details["inputs"][0]["shape"],
        input_layout=lowered.input_layout, file_size_bytes=len(content), ops=ops,
        tensor_dtypes=dtypes, float_tensors=floats, io=io_details,
        lowering={"applied": list(lowered.applied), "unsupported": list(lowered.unsupported)},
        edgetpu=et, converter=_settings(quantization, io_dtype), versions=_versions(),
        notes=notes,
    )
    if calib is not None:
        report.calibration = {"source": _describe(representative_data),
                              "examples": int(len(calib)), "preprocessing": preprocessing}
    if verify:
        if verify_data is not None:
            x = calibration.representative_array(verify_data, native_shape, verify_samples,
                                                 preprocessing, seed)
        elif calib is not None:
            x = calib[:verify_samples]
        else:
            x = np.random.default_rng(seed).normal(
                size=(min(verify_samples, 8),) + native_shape).astype(np.float32)
            notes.append("agreement measured on random normal inputs (no data given)")
        lowering_maps = lowered.input_layout != "native"
        report.agreement = verify_lib.agreement(
            source, content, x, quantization,
            to_lowered=lowered.to_lowered_input if lowering_maps else None,
            from_lowered=lowered.from_lowered_output if lowering_maps else None)
        if latency:
            first = x[:1]
            if lowering_maps:
                first = np.asarray(lowered.to_lowered_input(first))
            report.latency_ms = verify_lib.latency(content, first, repeats=latency_repeats)
        if not report.agreement["passed"]:
            message = (f"the .tflite does not agree with the Keras model: "
                       f"{report.agreement['criterion']} failed ({report.agreement})")
            notes.append(message)
            warnings.warn(message, stacklevel=2)
    from .. import io

    io.write_bytes(path, content)
    report.save(report_path)
    report.save_markdown(md_path)
    return report


def _describe(data):
    if isinstance(data, np.ndarray):
        return f"array {tuple(data.shape)} {data.dtype}"
    return str(data)
