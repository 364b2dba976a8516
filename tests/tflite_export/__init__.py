"""Tests of keras_priors.tflite_export."""
