"""--storage s3://...: uploads and outputs in a bucket on a real S3-compatible server (moto's, on loopback), so
several API replicas on one database serve the same files with no shared filesystem."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_process import Server
from tests.synthetic import solid_image
from vace.pipelines.job.errors import RequestError
from vace.pipelines.job.job import Job
from vace.pipelines.job.request import GenerationRequest
from vace.pipelines.media.codec import probe_video
from vace.server.downloads import byte_range
from vace.server.serve import resolve
from vace.server.settings import ServeSettings
from vace.server.storage import LocalStorage, ObjectStorage, StorageError
from vace.server.store import Prediction, new_id
from vace.server.worker.ray_executor import inline_local_media


def test_objects_round_trip_through_the_bucket(object_store, tmp_path: Path):
    storage = ObjectStorage(object_store.new_bucket(), object_store.options)
    storage.check()
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one read chunk
    storage.put_bytes("outputs/abc.mp4", data)
    source = tmp_path / "abc-frames.zip"
    source.write_bytes(b"zip bytes")
    storage.put_file("outputs/abc-frames.zip", source)
    assert not source.exists()  # uploaded, then gone from the local disk
    storage.put_bytes("outputs/abd.mp4", b"other job")
    assert storage.list("outputs/abc") == ["outputs/abc-frames.zip", "outputs/abc.mp4"]
    assert storage.size("outputs/abc.mp4") == len(data) and storage.size("outputs/none.mp4") is None
    assert storage.read_bytes("outputs/abc.mp4") == data
    assert b"".join(storage.chunks("outputs/abc.mp4", 1_000_000, 1_500_000)) == data[1_000_000:2_500_000]

    ref = storage.ref("outputs/abc.mp4")
    assert ref == f"{storage.url}/outputs/abc.mp4" and storage.rel_of(ref) == "outputs/abc.mp4"
    assert storage.rel_of("s3://another-bucket/replica-data/outputs/abc.mp4") is None
    assert storage.rel_of("https://example.com/a.mp4") is None and storage.rel_of(str(tmp_path / "x")) is None
    local = storage.readable(ref, tmp_path / "inputs", "src_video")  # what a worker renders from
    assert Path(local).read_bytes() == data and storage.readable("https://example.com/a.mp4", tmp_path, "x") == \
        "https://example.com/a.mp4"

    storage.delete("outputs/abc.mp4")
    storage.delete("outputs/abc.mp4")  # already gone: not an error
    for gone in (storage, LocalStorage(tmp_path / "data")):  # a request still naming it gets the field's error
        with pytest.raises(RequestError, match=r"^src_video: file not found \(removed from this server's storage\)$"):
            gone.readable(gone.ref("outputs/abc.mp4"), tmp_path / "again", "src_video")
    assert not list((tmp_path / "again").glob("*"))  # no empty download left behind
    assert storage.list("outputs/abc") == ["outputs/abc-frames.zip"]


def test_a_ray_job_carries_the_buckets_files_inline(object_store):
    """The Ray driver reads the server's own files from the bucket into the job: the actor needs no credentials."""
    storage = ObjectStorage(object_store.new_bucket(), object_store.options)
    storage.put_bytes("files/abc-first.png", b"png bytes")
    request = GenerationRequest(prompt="p", first_frame=storage.ref("files/abc-first.png"),
                                reference_images=["https://example.com/r.png"])
    job = Prediction(id=new_id(), endpoint="vace/tiny", version="", dialect="replicate", model="tiny", input={},
                     request=Job(request).to_dict(), status="processing")
    sent = inline_local_media(job, storage).job.request
    assert sent.first_frame == "data:image/png;base64," + base64.b64encode(b"png bytes").decode()
    assert sent.reference_images == ["https://example.com/r.png"]


def test_a_missing_bucket_or_bad_url_is_refused_at_start(object_store, tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' not found"):
        ObjectStorage("s3://no-such-bucket/p", object_store.options).check()
    serve = subprocess.run([sys.executable, "-m", "vace.server.cli", "serve", "--model", "tiny", "--data-dir",
                            str(tmp_path), "--storage", "s3://no-such-bucket/p", "--storage-options",
                            json.dumps(object_store.options)], capture_output=True, text=True, timeout=300)
    assert serve.returncode == 2 and "--storage s3://no-such-bucket/p: bucket 'no-such-bucket' not found" in \
        serve.stderr, serve.stderr
    with pytest.raises(ValueError, match=r"s3://BUCKET\[/PREFIX\]"):
        ServeSettings(storage="gs://bucket/p")
    with pytest.raises(ValueError, match="JSON object"):
        ServeSettings(storage="s3://b", storage_options='["endpoint_url"]')
    settings = ServeSettings(storage="s3://b/p/", storage_options='{"endpoint_url": "http://127.0.0.1:1"}')
    assert settings.storage == "s3://b/p" and settings.storage_options == {"endpoint_url": "http://127.0.0.1:1"}
    with pytest.raises(ValueError, match="--storage-options configures the object store of --storage"):
        resolve(ServeSettings(storage_options='{"endpoint_url": "http://127.0.0.1:1"}'))


def test_byte_ranges():
    assert byte_range(None, 100) is None and byte_range("bytes=0-9,20-29", 100) is None
    assert byte_range("bytes=10-19", 100) == (10, 19) and byte_range("bytes=90-", 100) == (90, 99)
    assert byte_range("bytes=-10", 100) == (90, 99) and byte_range("bytes=50-500", 100) == (50, 99)
    assert byte_range("bytes=100-", 100) is False and byte_range("bytes=20-10", 100) is False


def test_two_replicas_share_one_bucket(object_store, postgres, tiny_model_dir: Path, tmp_path: Path):
    """A renders (it has the worker), B only answers; an upload made on A feeds a prediction created on B, and the
    output is read through B. Each replica has its own empty data dir: the bucket is the only shared place."""
    bucket = object_store.new_bucket()
    shared = ["--model", "tiny", "--database-url", postgres.new_database(), "--storage", bucket,
              "--storage-options", json.dumps(object_store.options), "--public-url", "http://vace.test"]
    a = Server(tmp_path / "a", args=[*shared, "--max-render-side", "64"])
    b = Server(tmp_path / "b", args=[*shared, "--no-worker"])
    try:
        a.start(wait_ready=False)
        b.start()
        a.wait_health(timeout=600)
        png = io.BytesIO()
        solid_image(64, 64, (200, 30, 30)).save(png, format="PNG")
        with a.client() as http_a, b.client() as http_b:
            upload = http_a.post("/v1/files", files={"content": ("first.png", png.getvalue(), "image/png")})
            assert upload.status_code == 201, upload.text
            file_id = upload.json()["id"]
            assert http_b.get(f"/v1/files/{file_id}/download").content == png.getvalue()
            created = http_b.post("/v1/models/vace/tiny/predictions", json={"input": {
                "prompt": "a red square", "first_frame": f"http://vace.test/v1/files/{file_id}/download",
                "width": 64, "height": 64, "num_frames": 5, "steps": 1}})
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            deadline = time.monotonic() + 600
            while (done := http_b.get(f"/v1/predictions/{pid}").json())["status"] not in (
                    "succeeded", "failed", "canceled"):
                assert time.monotonic() < deadline, "the prediction did not finish"
                time.sleep(0.3)
            assert done["status"] == "succeeded", done["logs"]
            assert done["output"] == f"http://vace.test/outputs/{pid}.mp4"

            through_b = http_b.get(f"/outputs/{pid}.mp4")
            assert through_b.status_code == 200 and through_b.headers["content-type"] == "video/mp4"
            in_bucket = ObjectStorage(bucket, object_store.options).read_bytes(f"outputs/{pid}.mp4")
            assert through_b.content == in_bucket == http_a.get(f"/outputs/{pid}.mp4").content
            part = http_b.get(f"/outputs/{pid}.mp4", headers={"Range": "bytes=10-99"})
            assert part.status_code == 206 and part.content == in_bucket[10:100]
            assert part.headers["content-range"] == f"bytes 10-99/{len(in_bucket)}"
            assert http_b.get(f"/outputs/{pid}x.mp4").status_code == 404
            head = http_b.head(f"/outputs/{pid}.mp4", headers={"Range": "bytes=10-99"})
            assert head.status_code == 206 and head.content == b"" and head.headers["content-length"] == "90"
            assert head.headers["content-range"] == part.headers["content-range"]
            head = http_b.head(f"/outputs/{pid}.mp4")
            assert head.status_code == 200 and int(head.headers["content-length"]) == len(in_bucket)
            assert http_b.head(f"/outputs/{pid}x.mp4").status_code == 404
        video = tmp_path / "out.mp4"
        video.write_bytes(through_b.content)
        info = probe_video(video)
        assert (info["width"], info["height"], info["num_frames"]) == (64, 64, 5)
        for server in (a, b):  # nothing was kept on either replica's disk
            assert not list((server.data_dir / "outputs").glob("*")) and not (server.data_dir / "files").exists()
    finally:
        for server in (a, b):
            server.stop()
