"""Run a .tflite in the LiteRT interpreter, compare it with its Keras model, time it.

Agreement depends on the quantization: float32 outputs must match within 1e-4 relative
(max |tflite - keras| / max |keras|); quantized classifiers are compared by top-1
agreement (strict argmax, and tie-aware: quantized outputs can tie at the top),
segmentation outputs by the Dice overlap of their label maps (argmax for exclusive
classes, > 0.5 for sigmoid regions). Integer inputs and outputs are quantized /
dequantized with the tensor's own scale and zero point.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

SEGMENTATION_DICE = 0.97  # float-Keras vs quantized label maps, per channel
FP32_TOLERANCE = 1e-4


def interpreter(model, num_threads=None, delegates=True, allocate=True):
    """The LiteRT interpreter of a .tflite (bytes or a path): the package's one factory.

    `delegates=False` builds it without the default delegates (XNNPACK would fold ops into
    DELEGATE nodes, hiding them from op listings).
    """
    from pathlib import Path

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"num_threads": num_threads} if num_threads else {}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        interp = Interpreter(model_content=bytes(model), **kwargs)
    elif not Path(model).is_file():
        raise ValueError(f"TFLite file {str(model)!r} does not exist")
    else:
        interp = Interpreter(model_path=str(model), **kwargs)
    if allocate:
        interp.allocate_tensors()
    return interp


def quantize(x, detail):
    """Float array -> the tensor's integer dtype with its scale / zero point."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(x, dtype)
    scale, zero = detail["quantization"]
    if not scale:
        raise ValueError(f"input {detail['name']!r} is {dtype.name} without quantization "
                         "parameters")
    info = np.iinfo(dtype)
    return np.clip(np.rint(np.asarray(x, np.float64) / scale + zero), info.min,
                   info.max).astype(dtype)


def dequantize(q, detail):
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return np.asarray(q, np.float32)
    scale, zero = detail["quantization"]
    return ((np.asarray(q, np.float32) - zero) * scale).astype(np.float32)


class TFLiteRunner:
    """Feeds float batches to a single-input .tflite and returns float outputs: the whole
    batch at once when the model's batch is dynamic (the input is resized to it), else one
    example at a time (the exported models have a static batch of 1)."""

    def __init__(self, model, num_threads=None):
        self.interp = interpreter(model, num_threads)
        inputs = self.interp.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"expected a model with one input, it has {len(inputs)}")
        self.input = inputs[0]
        self.dynamic_batch = self.input["shape_signature"][0] == -1

    def _run(self, x):
        if tuple(self.input["shape"]) != x.shape:
            self.interp.resize_tensor_input(self.input["index"], x.shape)
            self.interp.allocate_tensors()
            self.input = self.interp.get_input_details()[0]
        self.interp.set_tensor(self.input["index"], quantize(x, self.input))
        self.interp.invoke()
        output = self.interp.get_output_details()[0]
        return dequantize(self.interp.get_tensor(output["index"]), output)

    def __call__(self, x):
        x = np.asarray(x, np.float32)
        if self.dynamic_batch:
            return self._run(x)
        return np.concatenate([self._run(example[None]) for example in x], axis=0)


def _is_exclusive(y):
    """Softmax-like outputs (several channels summing to 1) -> argmax; else threshold."""
    return y.shape[-1] > 1 and np.allclose(y.sum(-1), 1.0, atol=1e-2)


def dice(a, b):
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def compare(reference, candidate, quantization="none"):
    """Agreement of `candidate` (tflite) outputs with `reference` (Keras) outputs.

    -> {"task", "examples", "max_abs_error", "relative_error", ..., "passed", "criterion"}
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"tflite output shape {cand.shape} differs from the Keras output "
                         f"shape {ref.shape}")
    scale = float(np.max(np.abs(ref))) or 1.0
    max_abs = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
    out = {"examples": int(ref.shape[0]), "max_abs_error": max_abs,
           "relative_error": max_abs / scale}
    if ref.ndim == 2:
        out["task"] = "classification"
        top = ref.argmax(-1)
        out["top1_agreement"] = float(np.mean(top == cand.argmax(-1)))
        # an int8 output has a resolution of its scale (1/256 for a softmax): two classes
        # may quantize to the same top value, and argmax then picks the lower index. The
        # tie-aware figure counts the Keras class as agreeing when it is among the maxima.
        at_max = cand[np.arange(len(cand)), top] >= cand.max(-1)
        out["top1_agreement_ties"] = float(np.mean(at_max))
        out["tied_top1"] = int(np.sum(np.sum(cand >= cand.max(-1, keepdims=True), -1) > 1))
    elif ref.ndim >= 4:
        out["task"] = "segmentation"
        if _is_exclusive(ref):
            a, b = ref.argmax(-1), cand.argmax(-1)
            classes = range(1, ref.shape[-1]) if ref.shape[-1] > 1 else range(1)
            scores = [dice(a == c, b == c) for c in classes]
            out["label_map"] = "argmax"
        else:
            scores = [dice(ref[..., c] > 0.5, cand[..., c] > 0.5) for c in range(ref.shape[-1])]
            out["label_map"] = "> 0.5"
        out["dice_per_channel"] = [float(s) for s in scores]
        out["dice"] = float(np.mean(scores))
    else:
        out["task"] = "regression"
    if quantization == "none":
        out["criterion"] = f"relative_error <= {FP32_TOLERANCE}"
        out["passed"] = out["relative_error"] <= FP32_TOLERANCE
    elif "top1_agreement" in out:
        out["criterion"] = "top1_agreement_ties >= 0.99"
        out["passed"] = out["top1_agreement_ties"] >= 0.99
    elif "dice" in out:
        out["criterion"] = f"every channel's dice >= {SEGMENTATION_DICE}"
        out["passed"] = min(scores) >= SEGMENTATION_DICE
    else:
        out["criterion"] = "relative_error <= 0.05"
        out["passed"] = out["relative_error"] <= 0.05
    return out


def agreement(keras_model, tflite_model, x, quantization="none", to_lowered=None,
              from_lowered=None, batch_size=32):
    """Run both models on native-layout `x` and compare (`to_lowered` / `from_lowered` map
    between the Keras model's layout and the .tflite's, for lowered 3D models)."""
    x = np.asarray(x, np.float32)
    reference = np.concatenate([np.asarray(keras_model(x[i:i + batch_size], training=False))
                                for i in range(0, len(x), batch_size)], axis=0)
    runner = TFLiteRunner(tflite_model)
    outs = []
    for example in x:
        feed = example[None] if to_lowered is None else np.asarray(to_lowered(example[None]))
        y = runner(feed)
        outs.append(y if from_lowered is None else np.asarray(from_lowered(y)))
    return compare(reference, np.concatenate(outs, axis=0), quantization)


def latency(tflite_model, example=None, threads=(1, 2), warmup=3, repeats=20):
    """Median invoke time in ms with the default XNNPACK delegate, per thread count.

    -> {"1": ms, "2": ms, "repeats": n, "warmup": n, "delegate": "XNNPACK (default)"}
    """
    out = {"warmup": warmup, "repeats": repeats, "delegate": "XNNPACK (default delegates)"}
    for n in threads:
        interp = interpreter(tflite_model, num_threads=n)
        detail = interp.get_input_details()[0]
        if example is None:
            feed = np.zeros(detail["shape"], detail["dtype"])
        else:
            feed = quantize(np.asarray(example, np.float32).reshape(detail["shape"]), detail)
        interp.set_tensor(detail["index"], feed)
        for _ in range(warmup):
            interp.invoke()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            interp.invoke()
            times.append((time.perf_counter() - start) * 1e3)
        out[str(n)] = float(statistics.median(times))
    return out


def top1_accuracy(model, images, labels, batch_size=250, num_threads=None):
    """Top-1 accuracy of a classifier .tflite (bytes or path) in the LiteRT interpreter.

    `images` are float inputs exactly as the Keras model takes them (already preprocessed);
    an integer input tensor gets them quantized with its own scale and zero point. A model
    with a dynamic batch runs `batch_size` images at a time (`TFLiteRunner`).
    """
    images = np.asarray(images, dtype="float32")
    labels = np.asarray(labels).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    run = TFLiteRunner(model, num_threads)
    correct = sum(int(np.sum(np.argmax(run(images[i:i + batch_size]), -1)
                             == labels[i:i + batch_size]))
                  for i in range(0, len(images), batch_size))
    return correct / len(labels)


def tensor_types(model):
    """{tensor name: numpy dtype name} of a .tflite (bytes or path), without delegates."""
    interp = interpreter(model, delegates=False)
    return {d["name"]: np.dtype(d["dtype"]).name for d in interp.get_tensor_details()}
