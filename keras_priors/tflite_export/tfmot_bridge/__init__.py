"""The tfmot bridge: quantization-aware training and magnitude pruning for zoo models.

tensorflow-model-optimization (tfmot) only accepts tf_keras (Keras 2) models, so the bridge
rebuilds a Keras 3 functional model in tf_keras with every structured layer written as
built-in tf_keras layers from its `decompose()` steps (as the lowering passes do in Keras
3), copies the weights and checks that both models agree:

- `LowRankConv2D` (parallel basis): one `Conv2D` per member, each behind the
  `ZeroPadding2D` / `Cropping2D` of its step's pads, then `Concatenate`, then the optional
  1x1 combination `Conv2D`. The sequential ("sf") basis is a chain of `Conv2D`s.
- `RootConv2D`: by default (`root="split"`) a channel slice and a `Conv2D` per group, then
  `Concatenate` (STRIDED_SLICE + CONV_2D + CONCATENATION in TFLite); with
  `root="grouped"` one `Conv2D(groups=g)` (one grouped CONV_2D). Both pass tfmot's QAT
  and the full-int8 converter; tf_keras trains the grouped form through XLA, about 2x
  slower on CPU. Then the optional 1x1 combination.
- A `BatchNormalization` right after parallel branches (a low-rank basis without a
  combination, a split root layer) is split into one BN slice per branch before the
  `Concatenate`: tfmot has
  no quantization for a BN that does not follow a conv, and per-channel BN commutes with
  concatenation, so the result is exact.

Everything else maps one to one onto its tf_keras twin (see `SUPPORTED`).

Modules by concern: `twin` (`to_tf_keras`, the one-to-one `converters`), `qat`
(`quantize_aware`, tfmot `quantize_model`, with calibrated ranges), `pruning` (`prune`
with `prune_low_magnitude` and a polynomial-decay or constant schedule, `strip`,
`sparsity`), `tuning` (`fine_tune`, `recalibrate_batch_norm`) and `tflite`
(`to_tflite_int8` through the exporter's converter, `evaluate_tflite` in its LiteRT
interpreter).

tf_keras, tfmot, TensorFlow's converter and ai_edge_litert are imported inside the
functions that need them, so importing this package costs no more than `import keras`.

>>> from keras_priors import zoo                                   # doctest: +SKIP
>>> from keras_priors.tflite_export import tfmot_bridge as tb      # doctest: +SKIP
>>> model = zoo.load("nin_root8", weights="fashion_mnist")         # doctest: +SKIP
>>> qat = tb.quantize_aware(model, calibration_data=x_train[:200]) # doctest: +SKIP
>>> tb.fine_tune(qat, (x_train, y_train), epochs=1, lr=1e-3)       # doctest: +SKIP
>>> blob = tb.to_tflite_int8(qat, x_train[:200])                   # doctest: +SKIP
>>> tb.evaluate_tflite(blob, x_test, y_test)                       # doctest: +SKIP
"""

from .converters import SUPPORTED
from .pruning import prune, sparsity, strip
from .qat import calibrate_ranges, quantize_aware
from .tflite import evaluate_tflite, save_tflite, tflite_tensor_types, to_tflite_int8
from .tuning import fine_tune, recalibrate_batch_norm
from .twin import max_difference, to_tf_keras

__all__ = [
    "SUPPORTED",
    "calibrate_ranges",
    "evaluate_tflite",
    "fine_tune",
    "max_difference",
    "prune",
    "quantize_aware",
    "recalibrate_batch_norm",
    "save_tflite",
    "sparsity",
    "strip",
    "tflite_tensor_types",
    "to_tf_keras",
    "to_tflite_int8",
]
