"""`vace weights ...`: write the tiny models, list checkpoints, write and verify sha256 manifests."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    weights = sub.add_parser("weights", help="checkpoints: tiny test models, manifests, verification")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    tiny = wsub.add_parser("tiny", help="write the deterministic tiny random-weight models")
    tiny.add_argument("--out", required=True, help="directory to write tiny/ and tiny-a14b/ into")
    tiny.set_defaults(handler=_tiny)
    manifest = wsub.add_parser("manifest", help="record size and sha256 of every file in DIR")
    manifest.add_argument("dir")
    manifest.set_defaults(handler=_manifest)
    verify = wsub.add_parser("verify", help="check DIR against its manifest; names every mismatch")
    verify.add_argument("dir")
    verify.set_defaults(handler=_verify)
    listing = wsub.add_parser("list", help="list the supported checkpoints and where to get them")
    listing.set_defaults(handler=_list)


def _tiny(args: argparse.Namespace) -> int:
    from weights.tiny import write_tiny_bundle

    for name, path in write_tiny_bundle(args.out).items():
        print(f"{name}: {path}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from weights.integrity import write_manifest

    try:
        path = write_manifest(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from weights.integrity import verify_manifest

    problems = verify_manifest(args.dir)
    for line in problems:
        print(f"MISMATCH {line}", file=sys.stderr)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: all files match the manifest")
    return 0


def _list(args: argparse.Namespace) -> int:
    from weights.catalog import CHECKPOINTS

    for ckpt in CHECKPOINTS.values():
        print(f"{ckpt.name}\n  {ckpt.description}\n  subfolders: {', '.join(ckpt.components)}"
              f"\n  get it: {ckpt.fetch_hint()}")
    from weights.catalog import AUXILIARY

    for aux in AUXILIARY.values():
        print(f"{aux.name}\n  {aux.description}\n  use it: {aux.server_option}\n  get it: {aux.fetch_hint()}")
    return 0
