"""`vace batch report`: what each video of a batch cost in GPU time, against the hosted price of the same video.

GPU seconds are what the server recorded for each prediction (device-seconds held x GPUs in its group; a
local render holds one device). Our cost counts every row that ran, failed ones too; the hosted price counts
the videos delivered (succeeded rows).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vace.server.batch.prices import HOSTED_PRICES, gpu_cost, hosted_endpoint, hosted_quote
from vace.server.batch.state import SUCCEEDED, BatchState, RowState

REPORT_CSV = "batch-report.csv"
REPORT_JSON = "batch-report.json"
AUTO = "auto"


@dataclass
class JobCost:
    id: str
    line: int | None
    status: str
    prediction: str | None
    output: str | None
    width: int | None
    height: int | None
    num_frames: int | None
    gpus: int | None
    gpu_seconds: float | None
    gpu_hours: float | None
    gpu_cost_usd: float | None
    hosted_endpoint: str | None
    hosted_tier: str | None
    video_seconds: float | None
    hosted_usd: float | None
    note: str


@dataclass
class Totals:
    rows: int
    succeeded: int
    failed: int
    gpu_seconds: float
    gpu_hours: float
    gpu_cost_usd: float
    gpu_hour_price: float
    hosted_usd: float
    saving_usd: float
    missing_gpu_seconds: int  # rows whose prediction recorded no GPU seconds (not counted)


def job_cost(row: RowState, gpu_hour_price: float, hosted: str, default_two_experts: bool) -> JobCost:
    metrics = row.get("metrics") or {}
    video = row.get("video") or {}
    notes = []
    gpu_seconds = metrics.get("gpu_seconds")
    if gpu_seconds is None and row.status != "pending":
        notes.append("no GPU seconds recorded")
    endpoint = tier = seconds = usd = None
    if row.status == SUCCEEDED and video:
        two_experts = metrics["experts"] == 2 if "experts" in metrics else default_two_experts
        endpoint = hosted_endpoint(two_experts) if hosted == AUTO else hosted
        quote = hosted_quote(endpoint, video["width"], video["height"], video["num_frames"])
        tier, seconds, usd = quote.tier, quote.video_seconds, quote.usd
        if quote.note:
            notes.append(quote.note)
    if row.get("error"):
        notes.append(str(row.get("error")))
    return JobCost(
        id=row.id, line=row.get("line"), status=row.status, prediction=row.get("prediction"),
        output=row.get("output"), width=video.get("width"), height=video.get("height"),
        num_frames=video.get("num_frames"), gpus=metrics.get("gpus"), gpu_seconds=gpu_seconds,
        gpu_hours=None if gpu_seconds is None else gpu_seconds / 3600.0,
        gpu_cost_usd=None if gpu_seconds is None else gpu_cost(gpu_seconds, gpu_hour_price),
        hosted_endpoint=endpoint, hosted_tier=tier, video_seconds=seconds, hosted_usd=usd, note="; ".join(notes))


def build_report(state: BatchState, gpu_hour_price: float, hosted: str = AUTO) -> tuple[list[JobCost], Totals]:
    if hosted != AUTO and hosted not in HOSTED_PRICES:
        raise ValueError(f"unknown hosted endpoint {hosted!r}; use auto or one of {', '.join(HOSTED_PRICES)}")
    rows = sorted((r for r in state.rows.values() if r.get("line") is not None), key=lambda r: r.get("line"))
    jobs = [job_cost(r, gpu_hour_price, hosted, bool(state.header.get("two_experts"))) for r in rows]
    gpu_seconds = sum(j.gpu_seconds or 0.0 for j in jobs)
    cost = gpu_cost(gpu_seconds, gpu_hour_price)
    hosted_usd = sum(j.hosted_usd or 0.0 for j in jobs)
    succeeded = sum(j.status == SUCCEEDED for j in jobs)
    totals = Totals(rows=len(jobs), succeeded=succeeded, failed=sum(j.status in ("failed", "canceled") for j in jobs),
                    gpu_seconds=gpu_seconds, gpu_hours=gpu_seconds / 3600.0, gpu_cost_usd=cost,
                    gpu_hour_price=gpu_hour_price, hosted_usd=hosted_usd, saving_usd=hosted_usd - cost,
                    missing_gpu_seconds=sum(j.gpu_seconds is None and j.status != "pending" for j in jobs))
    return jobs, totals


def write_report(out_dir: Path, jobs: list[JobCost], totals: Totals) -> tuple[Path, Path]:
    csv_path, json_path = out_dir / REPORT_CSV, out_dir / REPORT_JSON
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(JobCost.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(j) for j in jobs)
    json_path.write_text(json.dumps({"totals": asdict(totals), "jobs": [asdict(j) for j in jobs]}, indent=2) + "\n")
    return csv_path, json_path


def summary(totals: Totals, jobs: list[JobCost]) -> str:
    endpoints = sorted({j.hosted_endpoint for j in jobs if j.hosted_endpoint})
    lines = [
        f"{totals.rows} videos: {totals.succeeded} succeeded, {totals.failed} failed, "
        f"{totals.rows - totals.succeeded - totals.failed} unfinished",
        f"GPU time: {totals.gpu_seconds:.1f} GPU-seconds = {totals.gpu_hours:.4f} GPU-hours",
        f"our cost at ${totals.gpu_hour_price:.2f}/GPU-hour: ${totals.gpu_cost_usd:.4f}",
        f"hosted price of the {totals.succeeded} delivered videos ({', '.join(endpoints) or 'none'}): "
        f"${totals.hosted_usd:.4f}",
        f"saving: ${totals.saving_usd:.4f}"
        + (f" ({100 * totals.saving_usd / totals.hosted_usd:.1f}% of the hosted price)" if totals.hosted_usd else ""),
    ]
    if totals.missing_gpu_seconds:
        lines.append(f"note: {totals.missing_gpu_seconds} rows have no GPU seconds recorded (not counted)")
    return "\n".join(lines)

