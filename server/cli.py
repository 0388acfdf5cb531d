"""The `vace` command: serve, generate, weights (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# Each command's module has `register(subparsers)` and owns its flags and handler. Only the module of the command
# being run is imported: `vace serve` (the API process) must not load the render engine and torch.
SUBCOMMANDS = {
    "generate": "vace.pipelines.cli.generate",
    "weights": "vace.pipelines.cli.weights",
    "bench": "vace.pipelines.cli.bench",
    "calibrate": "vace.pipelines.bench.calibrate",
    "serve": "vace.server.serve",
    "batch": "vace.server.batch.command",
}


def version_line() -> str:
    """`vace-server X (torch Y, CUDA Z or cpu only)`: what a bug report needs first."""
    import torch  # only for --version: every other command (serve's API process first) starts without it

    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "cpu only"
    return f"vace-server {importlib.metadata.version('vace-server')} (torch {torch.__version__}, {cuda})"


class VersionAction(argparse.Action):
    """--version, worked out only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object):
        super().__init__(option_strings, dest, nargs=0, help="print the version (and torch's) and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_line())  # on stdout, as argparse's own version action does
        parser.exit()


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with its command named, only that command's module is imported; else all of them
    (for --help and the usage error)."""
    parser = argparse.ArgumentParser(prog="vace", description="VACE video generation server and tools")
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    command = next((a for a in argv or [] if not a.startswith("-")), None)
    for name, module in SUBCOMMANDS.items():
        if command not in SUBCOMMANDS or name == command:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
