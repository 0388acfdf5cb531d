"""Sequence parallel: the context-parallel plan for the VACE transformer and the render groups whose ranks denoise
one job together."""
