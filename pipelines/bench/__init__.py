"""Measurement: `vace bench` (the real render path at real shapes) and `vace calibrate` (MagCache ratios)."""
