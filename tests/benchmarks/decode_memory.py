"""Input-video memory: how much a long, large source clip costs to decode for a smaller job.

    python -m tests.benchmarks.decode_memory                      # 1920x1080, 241 frames, 832*480 job
    python -m tests.benchmarks.decode_memory --source 128x72 --source-frames 13 --size 64*48 --frames 9

Writes the source clip (and a mask clip of the same shape), then, each in a fresh process, measures the peak
resident memory above the process's baseline of: decoding the video for the job (the job's frame count, and
all the source's frames as match_input_num_frames reads them), decoding the mask video, and building the
inpainting conditioning (decode + the float32 arrays handed to the pipeline). Prints a table and one JSON
line; beside each figure, what float32 frames at the source resolution would have taken.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.benchmarks.rss import MIB, emit, peak_since_reset, report, reset_peak, run_child

MODULE = "tests.benchmarks.decode_memory"


def write_clip(path: Path, width: int, height: int, frames: int, mask: bool = False) -> Path:
    """A moving gradient (or a moving white box on black, for a mask), encoded one frame at a time."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=16, codec="libx264", pix_fmt_out="yuv420p",
                                         quality=8, macro_block_size=1, output_params=["-preset", "ultrafast"],
                                         ffmpeg_log_level="error")
    writer.send(None)
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    for k in range(frames):
        if mask:
            box = (np.abs(x - (k * 7) % width) < width // 4) & (np.abs(y - height // 2) < height // 4)
            frame = np.repeat((box * 255).astype(np.uint8)[..., None], 3, axis=-1)
        else:
            frame = np.stack([(x + 3 * k + 0 * y) % 256, (y + 2 * k + 0 * x) % 256, (x + y + k) % 256], axis=-1)
        writer.send(np.ascontiguousarray(frame.astype(np.uint8)))
    writer.close()
    return path


def _request(args: argparse.Namespace, match_input: bool) -> object:
    from vace.pipelines.job.request import GenerationRequest, parse_size

    width, height = parse_size(args.size)
    return GenerationRequest(prompt="memory", width=width, height=height, num_frames=args.frames, steps=1, seed=0,
                             video=args.video, mask=args.mask or None, task="inpainting" if args.mask else None,
                             task_options={"match_input_num_frames": True} if match_input else {}).validated()


def _run_phase(args: argparse.Namespace, request: object, work: Path) -> dict:
    from vace.pipelines.conditioning import tasks
    from vace.pipelines.conditioning.inputs import load_inputs

    inputs = load_inputs(request, work)
    if args.phase == "conditioning":
        cond = tasks.build(request.task, inputs)
        return {"video": inputs.video.frames, "conditioning_video": cond.video, "conditioning_mask": cond.mask}
    return {"video": inputs.video.frames, "mask": inputs.mask_video}


def measure(args: argparse.Namespace) -> dict:
    """One phase in this (fresh) process: decode, or decode + build the conditioning."""
    work = Path(tempfile.mkdtemp(prefix="vace-decode-mem-"))
    # Once at the job's frame count first: imports, torch and ffmpeg start-up stay outside the measurement.
    _run_phase(args, _request(args, False), work / "warm")
    baseline = reset_peak()
    started = time.perf_counter()
    held = _run_phase(args, _request(args, args.match_input), work / "run")
    seconds = time.perf_counter() - started
    return {"phase": args.phase, "match_input": args.match_input, "peak_above_baseline_bytes": peak_since_reset() -
            baseline, "seconds": seconds,
            "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "bytes": int(v.nbytes)}
                       for k, v in held.items() if v is not None}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="1920x1080", help="WIDTHxHEIGHT of the source clip")
    parser.add_argument("--source-frames", type=int, default=241)
    parser.add_argument("--size", default="832*480", help="the job's WIDTH*HEIGHT")
    parser.add_argument("--frames", type=int, default=81, help="the job's frame count")
    parser.add_argument("--out", help="also write the JSON report here")
    parser.add_argument("--phase", choices=["decode", "conditioning"], help=argparse.SUPPRESS)
    parser.add_argument("--match-input", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--video", help=argparse.SUPPRESS)
    parser.add_argument("--mask", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        emit(measure(args))
        return 0

    src_w, src_h = (int(v) for v in args.source.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="vace-decode-mem-") as tmp:
        started = time.perf_counter()
        video = write_clip(Path(tmp) / "source.mp4", src_w, src_h, args.source_frames)
        mask = write_clip(Path(tmp) / "mask.mp4", src_w, src_h, args.source_frames, mask=True)
        written = time.perf_counter() - started
        common = ["--size", args.size, "--frames", str(args.frames), "--video", str(video)]
        runs = {
            "decode video, job frames": common + ["--phase", "decode"],
            "decode video, match_input_num_frames": common + ["--phase", "decode", "--match-input"],
            "decode video + mask, job frames": common + ["--phase", "decode", "--mask", str(mask)],
            "inpainting conditioning, job frames": common + ["--phase", "conditioning", "--mask", str(mask)],
            "inpainting conditioning, match_input_num_frames": common + ["--phase", "conditioning", "--mask",
                                                                          str(mask), "--match-input"],
        }
        results = {name: run_child(MODULE, run) for name, run in runs.items()}

    def float_at_source(frames: int) -> int:
        return frames * src_w * src_h * 3 * 4

    print(f"source {src_w}x{src_h} x {args.source_frames} frames (written in {written:.1f} s), "
          f"job {args.size} x {args.frames} frames")
    print(f"{'phase':<50} {'peak MiB':>9} {'s':>6}  {'float32 at source MiB':>21}  arrays held")
    for name, result in results.items():
        frames = result["arrays"]["video"]["shape"][0]
        arrays = ", ".join(f"{k} {'x'.join(map(str, v['shape']))} {v['dtype']}" for k, v in result["arrays"].items())
        print(f"{name:<50} {result['peak_above_baseline_bytes'] / MIB:>9.0f} {result['seconds']:>6.1f}  "
              f"{float_at_source(frames) / MIB:>21.0f}  {arrays}")
    return report({"source": {"width": src_w, "height": src_h, "frames": args.source_frames},
                   "job": {"size": args.size, "frames": args.frames}, "results": results}, args.out)


if __name__ == "__main__":
    sys.exit(main())
