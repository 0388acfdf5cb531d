"""The `vace` command: serve, generate, weights (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

import torch

# Each entry: module with `register(subparsers)`; modules own their subcommands and handlers.
SUBCOMMAND_MODULES = (
    "vace.pipelines.cli.generate",
    "vace.pipelines.cli.weights",
    "vace.pipelines.cli.bench",
    "vace.pipelines.bench.calibrate",
    "vace.server.serve",
    "vace.server.batch.command",
)


def version_line() -> str:
    """`vace-server X (torch Y, CUDA Z or cpu only)`: what a bug report needs first."""
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "cpu only"
    return f"vace-server {importlib.metadata.version('vace-server')} (torch {torch.__version__}, {cuda})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vace", description="VACE video generation server and tools")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
