"""TFLite / Edge TPU export: lowering passes, conversion and quantization, the Edge TPU
report, verification in the LiteRT interpreter.

>>> from keras_priors import tflite_export
>>> report = tflite_export.export("nin_root8", "nin_root8_int8.tflite", quantization="int8",
...                               representative_data="fashion_mnist",
...                               weights="fashion_mnist")            # doctest: +SKIP
>>> report.agreement["top1_agreement"], report.latency_ms["2"]       # doctest: +SKIP
"""

from .convert import IO_DTYPES, QUANTIZATIONS, TARGETS, ConversionError, export, resolve_model
from .edgetpu import EdgeTPUError
from .report import ExportReport

__all__ = [
    "IO_DTYPES",
    "QUANTIZATIONS",
    "TARGETS",
    "ConversionError",
    "EdgeTPUError",
    "ExportReport",
    "export",
    "resolve_model",
]
