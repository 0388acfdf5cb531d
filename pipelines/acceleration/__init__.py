"""Acceleration: presets, the step cache, the GPU levers (attention backend, compile, FP8), MagCache calibration
files and the analytic FLOP count."""
