"""Quantize stage: TFLite variants of the float model, calibration, drift and Edge TPU checks."""
