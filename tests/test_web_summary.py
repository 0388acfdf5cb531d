"""The page's view of a prediction: media as resubmittable URLs, data: URIs elided in lists, step i/N."""

from __future__ import annotations

from pathlib import Path

from vace.server.service.predictions import PredictionService, ServiceConfig
from vace.server.store import PROCESSING, Prediction, Store
from vace.server.web.summary import media_url, summary


def _service(tmp_path: Path) -> PredictionService:
    data = tmp_path / "data"
    return PredictionService(Store(f"sqlite:///{tmp_path / 'db.sqlite'}"),
                             ServiceConfig(data_dir=data, public_url="http://127.0.0.1:8000"))


def test_media_references_become_urls_and_server_paths_never_show(tmp_path: Path):
    service = _service(tmp_path)
    data = service.config.data_dir
    assert media_url(service, str(data / "files" / "abc123-clip.mp4")) == "http://127.0.0.1:8000/v1/files/abc123"
    assert media_url(service, str(data / "outputs" / "p1.mp4")) == "http://127.0.0.1:8000/outputs/p1.mp4"
    assert media_url(service, "https://example.com/a.mp4") == "https://example.com/a.mp4"
    assert media_url(service, "data:image/png;base64,AAAA") == "data:image/png;base64,AAAA"
    assert media_url(service, "/etc/passwd") is None


def test_summary_of_a_running_prediction(tmp_path: Path):
    service = _service(tmp_path)
    big = "data:video/mp4;base64," + "A" * 5000
    pred = Prediction(
        id="p1", endpoint="vace/tiny", version="", dialect="replicate", model="tiny",
        input={"prompt": "fox", "video": big}, status=PROCESSING, progress=40.0, created_at=1.0, started_at=2.0,
        request={"prompt": "fox", "steps": 20, "width": 64, "height": 48, "video": big, "model": "tiny",
                 "mask": str(service.config.data_dir / "files" / "f00-mask.png"), "reference_images": []},
        preview={"step": 8, "total": 20, "image": "data:image/jpeg;base64,/9j/", "width": 96, "height": 96})
    body = summary(pred, service, position=None)
    assert (body["step"], body["steps"], body["status"]) == (8, 20, "processing")
    assert body["input"]["video"] == "data:video/mp4;base64,... (5022 characters)"
    expected = {"prompt": "fox", "steps": 20, "width": 64, "height": 48, "sampler": "unipc",
                "video": "data:video/mp4;base64,... (5022 characters)", "mask": "http://127.0.0.1:8000/v1/files/f00"}
    assert expected.items() <= body["rerun"].items()  # every request field, defaults included
    assert "model" not in body["rerun"] and "reference_images" not in body["rerun"]
    assert body["preview"]["step"] == 8 and body["output"] is None
    assert body["page"] == "http://127.0.0.1:8000/p/p1"
    full = summary(pred, service, full=True, preview=False)
    assert full["rerun"]["video"] == big and "preview" not in full
