"""Full-integer TFLite of a tf_keras model through the exporter's one converter
(`convert.convert_model`), evaluated through its one LiteRT interpreter (`verify`)."""

from __future__ import annotations

import os

import numpy as np

from .. import calibration, verify
from ..convert import convert_model
from .pruning import has_pruning, strip
from .twin import as_tf_keras


def to_tflite_int8(tfk_model, representative_data, count=200):
    """Full-integer TFLite bytes: int8 weights and activations, int32 biases, int8 I/O.

    `representative_data` is an array of model inputs (the first `count` are used, one
    at a time) or a generator function yielding `[batch]` lists. The model may be a float
    tf_keras model (post-training quantization), a QAT model (its ranges are used), a
    pruned one (stripped first) or a Keras 3 model (converted with `to_tf_keras` first).
    Only TFLITE_BUILTINS_INT8 ops are allowed, so conversion fails rather than leave a
    float op behind.
    """
    model = as_tf_keras(tfk_model)
    model = strip(model) if has_pruning(model) else model
    representative = representative_data if callable(representative_data) else \
        calibration.generator(np.asarray(representative_data, dtype="float32")[:count])
    return convert_model(model, "int8", representative, io_dtype="int8")


def evaluate_tflite(model, images, labels, batch_size=250):
    """Top-1 accuracy of a .tflite (bytes or path) in the LiteRT interpreter (two threads
    at most); see `verify.top1_accuracy`."""
    return verify.top1_accuracy(model, images, labels, batch_size,
                                num_threads=min(2, os.cpu_count() or 1))


def tflite_tensor_types(model):
    """{tensor name: numpy dtype name} of a .tflite (bytes or path), without delegates."""
    return verify.tensor_types(model)


def save_tflite(blob, path):
    """Write TFLite bytes to `path` atomically (temp file + rename); returns the Path."""
    from pathlib import Path

    from ... import io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.write_bytes(path, blob)
