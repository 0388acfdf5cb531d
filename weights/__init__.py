"""Weights: the checkpoint catalogue, layout checks and sha256 manifests. Imports nothing above it."""
