"""`vace weights ...`: write the tiny models, list checkpoints, write and verify sha256 manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vace.pipelines.fixtures.tiny_model import resolve_model, write_tiny_bundle
from vace.weights.annotators import ANNOTATOR_WEIGHTS, annotators_root
from vace.weights.catalog import AUXILIARY, CHECKPOINTS, DISTILL_LORAS, INTERPOLATORS, PROMPT_EXTENDERS
from vace.weights.integrity import verify_manifest, write_manifest


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
    ann = wsub.add_parser("annotators", help="check the annotator weights directories (depth, pose, flow, ...)")
    ann.add_argument("--root", help="annotators root (default: $VACE_ANNOTATORS_DIR, else beside --model)")
    ann.add_argument("--model", help="tiny | tiny-a14b | model directory whose sibling annotators/ folder is the root")
    ann.set_defaults(handler=_annotators)


def _tiny(args: argparse.Namespace) -> int:
    for name, path in write_tiny_bundle(args.out).items():
        print(f"{name}: {path}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    try:
        path = write_manifest(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    problems = verify_manifest(args.dir)

    # An annotators root: every annotator folder present must also hold the files its loader needs.
    for entry in ANNOTATOR_WEIGHTS.values():
        if (Path(args.dir) / entry.dirname).is_dir():
            problems += [f"{entry.dirname}/{f}: missing (needed by annotator {entry.name})"
                         for f in entry.missing(Path(args.dir))]
    # An interpolators root: rife/ and film/ must hold their weights file.
    for name, helper in INTERPOLATORS.items():
        if (Path(args.dir) / name).is_dir():
            problems += [f"{name}/{f}: missing (needed by interpolator {name})" for f in helper.missing(
                Path(args.dir) / name)]
    for line in problems:
        print(f"MISMATCH {line}", file=sys.stderr)
    if problems:
        print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.dir}: all files match the manifest")
    return 0


def _list(args: argparse.Namespace) -> int:
    for ckpt in CHECKPOINTS.values():
        print(f"{ckpt.name}\n  {ckpt.description}\n  subfolders: {', '.join(ckpt.components)}"
              f"\n  get it: {ckpt.fetch_hint()}")

    print("\nannotators (under --annotators-dir / --root, else <weights root>/annotators beside the model):")
    for entry in ANNOTATOR_WEIGHTS.values():
        print(f"{entry.name}\n  {entry.classes}\n  tasks: {', '.join(entry.tasks)}"
              f"\n  folder: <ROOT>/{entry.dirname}/ with {', '.join(entry.files)}\n  get it: {entry.source}")

    for aux in AUXILIARY.values():
        print(f"{aux.name}\n  {aux.description}\n  use it: {aux.server_option}\n  get it: {aux.fetch_hint()}")

    print("\nstep-distillation LoRAs (put them in --lora-dir; preset turbo with --distill-lora NAME):")
    for lora in DISTILL_LORAS.values():
        print(f"{lora.name}\n  recipe: {lora.recipe}\n  get it: {lora.fetch_hint()}")
    print("\nframe interpolators (under --interpolators, else <weights root>/interpolators beside the model) and "
          "prompt extenders (--prompt-extender[-vl], else <weights root>/prompt-extender[-vl]):")
    for name, helper in {**INTERPOLATORS, **PROMPT_EXTENDERS}.items():
        folder = f"<ROOT>/{name}/" if name in INTERPOLATORS else "DIR/"
        print(f"{name}\n  {helper.description}\n  folder: {folder} with {', '.join(helper.files)}"
              f"\n  use it: {helper.server_option}\n  get it: {helper.source.replace('<DIR>', folder.rstrip('/'))}")
    return 0


def _annotators(args: argparse.Namespace) -> int:
    model_dir = resolve_model(args.model) if args.model else None  # `tiny` is the built-in model, not a path
    root = Path(args.root) if args.root else annotators_root(model_dir)
    print(f"annotators root: {root}")
    missing = 0
    for entry in ANNOTATOR_WEIGHTS.values():
        gaps = entry.missing(root)
        missing += bool(gaps)
        state = "ok" if not gaps else f"MISSING {', '.join(gaps)}"
        print(f"  {entry.name:18} {root / entry.dirname}: {state}")
    if missing:
        print(f"{missing} annotator(s) without weights; `vace weights list` says where to get them", file=sys.stderr)
    return 1 if missing else 0
