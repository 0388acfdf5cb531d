"""`vace batch` without a server: manifests and their checks, the state journal, hosted prices, the report."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import httpx
import pytest

from tests.synthetic import save_image, solid_image
from vace.pipelines.engine.loading import load_pipeline
from vace.pipelines.engine.loras import LoraConfig
from vace.pipelines.fixtures.tiny_loras import TINY_STYLE, resolve_tiny_loras, write_lora
from vace.pipelines.media.codec import probe_video
from vace.server.batch import command
from vace.server.batch.execute import LocalBatch, plan_rows
from vace.server.batch.manifest import check_rows, read_manifest, server_lora_check
from vace.server.batch.prices import WAN_22_VACE_FUN_A14B, WAN_VACE_14B, hosted_quote
from vace.server.batch.progress import BatchProgress
from vace.server.batch.remote import ServerClient, ServerError
from vace.server.batch.report import build_report, write_report
from vace.server.batch.state import STATE_FILE, BatchState, StateError


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_three_bad_rows_are_all_named_with_their_line_numbers(tmp_path: Path):
    (tmp_path / "clip.mp4").write_bytes(b"not decoded by the check")
    manifest = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": "ok1", "prompt": "fine", "width": 32, "height": 32, "video": "clip.mp4"},
        {"id": "unknown", "prompt": "a", "colour": "red"},
        {"id": "size", "prompt": "b", "width": 100, "height": 32},
        {"id": "missing", "prompt": "c", "video": "nowhere/missing.mp4"},
        {"id": "ok2", "prompt": "fine too", "num_frames": 9},
    ])
    problems = check_rows(read_manifest(manifest))
    assert [(p.line, p.row_id, p.field) for p in problems] == [
        (2, "unknown", "colour"), (3, "size", "width"), (4, "missing", "video")]
    assert problems[0].message == "unknown field"
    assert problems[1].message == "must be a multiple of 16, got 100"
    assert problems[2].message == f"file not found: {tmp_path / 'nowhere/missing.mp4'}"
    assert str(problems[1]) == "line 3 (size): width: must be a multiple of 16, got 100"


def test_csv_cells_take_their_fields_types(tmp_path: Path):
    path = tmp_path / "jobs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "width", "height", "guidance", "reference_images", "task_options", "output"])
        writer.writerow(["a", "a fox, running", "32", "48", "4.5", "r1.png|r2.png", "", "shots/a.mp4"])
        writer.writerow(["", "", "", "", "", "", "", ""])
        writer.writerow(["b", "multi\nline", "sixteen", "32", "", "", '{"expand_ratio": 0.5}', ""])
    manifest = read_manifest(path)
    a, b = manifest.rows
    assert (a.line, a.id, a.output) == (2, "a", "shots/a.mp4")
    assert a.input == {"prompt": "a fox, running", "width": 32, "height": 48, "guidance": 4.5,
                       "reference_images": ["r1.png", "r2.png"]}
    assert (b.line, b.output) == (4, "b.mp4")  # the blank record is skipped; lines count the file's lines
    assert [(p.line, p.field, p.message) for p in b.problems] == [(4, "width", "must be an integer, got 'sixteen'")]


def test_loras_in_csv_and_jsonl_rows_and_bad_ones_named(tmp_path: Path):
    path = tmp_path / "jobs.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "prompt", "loras"])
        writer.writerow(["a", "fox", "tiny-style:0.5; https://h.test/x.safetensors ;https://h.test/y.safetensors:-1;"
                                     "http://h.test:8080/z.safetensors;http://h.test:8080/w.safetensors:0.25"])
        writer.writerow(["b", "fox", "tiny-style:lots"])
        writer.writerow(["c", "fox", "../style.safetensors"])
    a, b, c = read_manifest(path).rows
    assert a.input["loras"] == [{"name": "tiny-style", "scale": 0.5}, {"url": "https://h.test/x.safetensors",
                                "scale": 1.0}, {"url": "https://h.test/y.safetensors", "scale": -1.0},
                                {"url": "http://h.test:8080/z.safetensors", "scale": 1.0},
                                {"url": "http://h.test:8080/w.safetensors", "scale": 0.25}]
    assert [(p.line, p.row_id, p.field) for p in b.problems + c.problems] == [(3, "b", "loras"), (4, "c", "loras")]
    assert "the scale after the last ':' must be a number" in b.problems[0].message
    assert "a LoRA name from the library or an http(s) URL" in c.problems[0].message

    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "a", "loras": [{"name": "tiny-style", "scale": 0.8, "expert": "both"}]},
        {"prompt": "b", "loras": [{"name": "tiny-style", "scale": 9}]},
        {"prompt": "c", "loras": [{"name": "tiny-style"}, {"name": "absent"}]},
        {"prompt": "d", "loras": [{"path": "/x/style.safetensors"}]},
        {"prompt": "e", "preset": "turbo"},
    ]))
    listing = {"loras": [{"name": "tiny-style", "fits": ["tiny"]}], "distill": None}
    found = [(p.line, p.field) for p in check_rows(manifest, lora_check=server_lora_check(listing, "tiny"))]
    assert found == [(2, "loras[0].scale"), (3, "loras[1].name"), (4, "loras[0].path"), (5, "preset")]
    other = check_rows(read_manifest(write_jsonl(tmp_path / "o.jsonl", [{"prompt": "a", "loras": [
        {"name": "tiny-style"}]}])), lora_check=server_lora_check(listing, "big"))
    assert [(p.field, p.message) for p in other] == [("loras[0].name", "LoRA 'tiny-style' does not fit model big")]
    broken = {"loras": [{"name": "tiny-style", "error": "not a safetensors file"}], "distill": None}
    unreadable = check_rows(read_manifest(write_jsonl(tmp_path / "u.jsonl", [{"prompt": "a", "loras": [
        {"name": "tiny-style"}]}])), lora_check=server_lora_check(broken, "tiny"))
    assert [(p.field, p.message) for p in unreadable] == [
        ("loras[0].name", "the server cannot use LoRA 'tiny-style': not a safetensors file")]


def test_ids_and_outputs_are_unique_and_outputs_stay_inside(tmp_path: Path):
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "a"}, {"id": "x", "prompt": "b", "output": "row1.mp4"}, {"id": "x", "prompt": "c"},
        {"id": "y", "prompt": "d", "output": "../escape.mp4"}, {"id": "z", "prompt": "e", "output": "z.mov"}]))
    assert manifest.rows[0].id == "row1"
    found = [(p.line, p.field, p.message) for p in check_rows(manifest)]
    assert found == [
        (2, "output", "'row1.mp4' is already written by line 1"),
        (3, "id", "'x' is already used by line 2"),
        (4, "output", "must be a relative .mp4 path inside the output folder, got '../escape.mp4'"),
        (5, "output", "must be a relative .mp4 path inside the output folder, got 'z.mov'"),
    ]


def test_the_servers_schema_decides_which_fields_exist(tmp_path: Path):
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "steps": 2}]))
    found = check_rows(manifest, schema={"prompt": {"type": "string"}})
    assert [(p.field, p.message) for p in found] == [("steps", "unknown field")]


def test_unknown_task_options_are_refused_by_name(tmp_path: Path):
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "a", "task": "warp"}, {"prompt": "b", "task": "t2v", "task_options": {"zoom": 1}}]))
    found = [(p.line, p.field) for p in check_rows(manifest)]
    assert found[0] == (1, "task") and found[1][0] == 2 and "zoom" in found[1][1]


def test_hosted_price_of_81_frames_at_480p_is_fals_0_2025():
    quote = hosted_quote(WAN_VACE_14B, 832, 480, 81)
    assert (quote.tier, quote.video_seconds) == ("480p", 81 / 16)
    assert quote.usd == pytest.approx(0.2025, abs=1e-12)
    assert hosted_quote(WAN_VACE_14B, 1280, 720, 81).usd == pytest.approx(0.405)
    assert hosted_quote(WAN_22_VACE_FUN_A14B, 1024, 576, 161).usd == pytest.approx(161 / 16 * 0.075)
    small = hosted_quote(WAN_VACE_14B, 64, 64, 17)
    assert small.tier == "480p" and "below the smallest priced tier" in small.note
    assert hosted_quote(WAN_VACE_14B, 1920, 1088, 81).usd is None


def test_journal_replays_rows_and_survives_a_torn_last_line(tmp_path: Path):
    state = BatchState.open(tmp_path, mode="server")
    state.record("a", "submitting", attempt=1, key="k1", line=1)
    state.record("a", "submitted", prediction="p1")
    state.record("b", "succeeded", line=2, metrics={"gpu_seconds": 1.5})
    with open(tmp_path / STATE_FILE, "a") as fh:
        fh.write('{"row": "a", "status": "succ')  # killed mid-write
    again = BatchState.open(tmp_path)
    assert again.batch_id == state.batch_id
    assert (again.rows["a"].status, again.rows["a"].attempt, again.rows["a"].get("prediction")) == (
        "submitted", 1, "p1")
    again.record("a", "succeeded")
    assert BatchState.load(tmp_path).rows["a"].status == "succeeded"
    (tmp_path / STATE_FILE).write_text('{"not": "a batch"}\n')
    with pytest.raises(StateError):
        BatchState.load(tmp_path)


def test_plan_skips_finished_rows_and_refuses_changed_ones(tmp_path: Path):
    rows = [{"id": f"r{i}", "prompt": f"p{i}"} for i in range(5)]
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    out = tmp_path / "out"
    state = BatchState.open(out)
    fingerprints = {r.id: r.fingerprint for r in manifest.rows}
    (out / "r0.mp4").write_bytes(b"video")
    state.record("r0", "succeeded", fingerprint=fingerprints["r0"], prediction="p0")
    state.record("r1", "failed", fingerprint=fingerprints["r1"])
    state.record("r2", "submitted", fingerprint=fingerprints["r2"], prediction="p2")
    state.record("r3", "succeeded", fingerprint=fingerprints["r3"], prediction="p3")  # output file gone
    plan = plan_rows(manifest, state, retry_failed=False)
    assert [r.id for r in plan.rows] == ["r2", "r3", "r4"] and (plan.done, plan.failed) == (1, 1)
    assert [r.id for r in plan_rows(manifest, state, retry_failed=True).rows] == ["r2", "r3", "r1", "r4"]
    changed = read_manifest(write_jsonl(tmp_path / "m2.jsonl", [{**rows[0], "prompt": "other"}, *rows[1:]]))
    with pytest.raises(StateError, match=r"r0 \(line 1\)"):
        plan_rows(changed, state, retry_failed=False)


def test_report_totals_and_hosted_comparison(tmp_path: Path, capsys: pytest.CaptureFixture):
    state = BatchState.open(tmp_path)
    video = {"width": 832, "height": 480, "num_frames": 81, "fps": 16}
    state.record("a", "succeeded", line=1, video=video, metrics={"gpu_seconds": 720.0, "gpus": 1})
    state.record("b", "succeeded", line=2, video=video, metrics={"gpu_seconds": 1080.0, "gpus": 2, "experts": 2})
    state.record("c", "failed", line=3, video=video, metrics={"gpu_seconds": 36.0, "gpus": 1}, error="boom")
    jobs, totals = build_report(state, gpu_hour_price=2.0)
    assert [j.hosted_endpoint for j in jobs] == [WAN_VACE_14B, WAN_22_VACE_FUN_A14B, None]
    assert jobs[0].hosted_usd == pytest.approx(0.2025) and jobs[1].hosted_usd == pytest.approx(81 / 16 * 0.05)
    assert totals.gpu_seconds == 1836.0 and totals.gpu_hours == pytest.approx(0.51)
    assert totals.gpu_cost_usd == pytest.approx(1.02)
    assert totals.hosted_usd == pytest.approx(0.2025 + 0.253125)
    assert totals.saving_usd == pytest.approx(0.2025 + 0.253125 - 1.02)
    assert jobs[2].note == "boom"
    csv_path, json_path = write_report(tmp_path, jobs, totals)
    assert [r["id"] for r in csv.DictReader(open(csv_path))] == ["a", "b", "c"]
    assert json.loads(json_path.read_text())["totals"]["gpu_seconds"] == 1836.0
    fixed = build_report(state, gpu_hour_price=2.0, hosted=WAN_VACE_14B)[1]
    assert fixed.hosted_usd == pytest.approx(2 * 0.2025)
    args = argparse.Namespace(out=tmp_path, gpu_hour_price=2.0, hosted="auto")
    assert command._report(args) == 0
    out = capsys.readouterr().out
    assert "1836.0 GPU-seconds = 0.5100 GPU-hours" in out and "$1.0200" in out


def test_batch_registers_run_check_report():
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["batch", "run", "m.jsonl", "--out", "o", "--server", "http://127.0.0.1:1",
                              "--retry-failed", "--concurrency", "2"])
    assert args.handler is command._run and args.retry_failed and args.concurrency == 2
    assert parser.parse_args(["batch", "check", "m.csv", "--local"]).handler is command._check
    report = parser.parse_args(["batch", "report", "o"])
    assert report.handler is command._report and report.gpu_hour_price == 3.0 and report.hosted == "auto"


def test_local_batch_renders_rows_and_counts_one_device(tmp_path: Path, tiny_model_dir: Path):
    tiny_model = load_pipeline(tiny_model_dir, device="cpu")  # its own: the LoRA adapter stays on this one

    save_image(solid_image(16, 16, (0, 200, 0)), tmp_path / "ref.png")
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", [
        {"id": "a", "prompt": "x", "width": 32, "height": 32, "num_frames": 5, "steps": 1, "output": "o/a.mp4",
         "loras": [{"name": TINY_STYLE, "scale": 0.5}]},
        {"id": "b", "prompt": "y", "width": 32, "height": 16, "num_frames": 5, "steps": 1,
         "reference_images": ["ref.png"]},
    ]))
    out = tmp_path / "out"
    state = BatchState.open(out, mode="local")
    batch = LocalBatch(tiny_model, state, manifest, BatchProgress(2, enabled=False),
                       LoraConfig(library_dir=resolve_tiny_loras()))
    outcome = batch.run(plan_rows(manifest, state, retry_failed=False).rows)
    assert (outcome.succeeded, outcome.failed) == (2, 0), batch.errors
    assert probe_video(out / "o/a.mp4") == {"num_frames": 5, "width": 32, "height": 32, "fps": 16.0}
    assert probe_video(out / "b.mp4")["width"] == 32
    for row in ("a", "b"):
        metrics = BatchState.load(out).rows[row].get("metrics")
        assert metrics["gpus"] == 1 and metrics["gpu_seconds"] == metrics["predict_time"] > 0
    rows = BatchState.load(out).rows
    assert [(r["lora"], r["scale"]) for r in rows["a"].get("metrics")["loras"]] == [(TINY_STYLE, 0.5)]
    assert "loras" not in rows["b"].get("metrics")
    assert not (out / ".work").exists()
    assert plan_rows(manifest, BatchState.load(out), retry_failed=False).done == 2


def test_local_check_resolves_loras_where_the_rows_will_render(tmp_path: Path, tiny_model_dir: Path,
                                                               capsys: pytest.CaptureFixture):
    """--local: names in the tiny LoRA library (the tiny model's default), local paths allowed and checked; a
    low-noise distill without --distill-lora is refused in one line."""
    from vace.server.cli import build_parser

    wide = write_lora(tmp_path / "wide.safetensors", "comfy", seed=3, dim=48)
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": "a", "loras": [{"name": TINY_STYLE, "scale": 0.5}], "preset": "turbo"},
        {"prompt": "b", "loras": [{"name": "absent"}]},
        {"prompt": "c", "loras": [{"path": str(wide)}]},
        {"prompt": "d", "loras": [{"path": str(tmp_path / "style.safetensors")}]},
    ])
    args = build_parser().parse_args(["batch", "check", str(manifest), "--local"])
    _, problems = command.checked_manifest(args, None)
    assert [(p.line, p.field) for p in problems] == [(2, "loras[0].name"), (3, "loras[0].path"),
                                                     (4, "loras[0].path")]
    assert "does not fit model tiny" in problems[1].message and "file not found" in problems[2].message
    alone = build_parser().parse_args(["batch", "check", str(manifest), "--local", "--distill-lora-low-noise",
                                       TINY_STYLE])
    assert command._check(alone) == command.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.endswith("\n") and "error: --distill-lora-low-noise " in err and "give --distill-lora too" in err
    broken = tmp_path / "broken"  # a local model whose model_index.json is gone: one line naming it, no traceback
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model_index.json").unlink()
    unreadable = build_parser().parse_args(["batch", "check", str(manifest), "--local", "--model", str(broken)])
    assert command._check(unreadable) == command.EXIT_REFUSED
    err = capsys.readouterr().err
    assert f"error: the served model at {broken} has no readable model_index.json" in err and "Traceback" not in err


def test_the_client_waits_out_429_and_retries_an_unavailable_server():
    answers = [httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(429),
               httpx.Response(503), httpx.Response(201, json={"id": "p1", "status": "starting"})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    slept: list[float] = []
    client = ServerClient("http://127.0.0.1:9", "k", sleep=slept.append, transport=httpx.MockTransport(handler))
    assert client.create("tiny", {"prompt": "a"}, "key-1")["id"] == "p1"
    assert slept == [7.0, 2.0, 4.0]  # Retry-After, then doubling backoff
    assert client.throttled == 2
    assert all(r.headers["Idempotency-Key"] == "key-1" and r.headers["Authorization"] == "Bearer k" for r in seen)
    refusal = {"status": 422, "detail": "x", "invalid_fields": [{"field": "width", "description": "too wide"}]}
    answers.append(httpx.Response(422, json=refusal))
    with pytest.raises(ServerError) as info:
        client.create("tiny", {"prompt": "a"}, "key-2")
    assert (info.value.status, info.value.message) == (422, "width: too wide")


def test_an_unreachable_server_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture):
    @command.refusals
    def handler(args: argparse.Namespace) -> int:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    assert handler(argparse.Namespace(server="http://127.0.0.1:9")) == command.EXIT_REFUSED
    assert capsys.readouterr().err == ("error: cannot reach the server at http://127.0.0.1:9: "
                                       "[Errno 111] Connection refused\n")
