"""The operator's page in a real headless Chromium (Debian's chromium, driven by playwright; no browser download).

One test walks what an operator does: enter the key, submit a tiny job from the playground with an uploaded
video and a LoRA from the server's library, watch its progress bar and live previews, cancel a second job from
the queue, play the finished video, fill the form again from it (Run again: every field, the LoRA too), open the
prediction's own page and the offline API docs. Around it the API side: a job whose input cannot be
fetched, /metrics after those three jobs, and preview events on a prediction's SSE stream and webhook.
Every request the browser made is recorded: all went to the server on loopback. Screenshots of each view
are saved under the test's tmp dir (paths printed).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.server_process import Server, release, stopped, wait_for, webhook_receiver
from tests.system_deps import need_debian, need_python

API_KEY = "web-page-key"
WIDTH, HEIGHT, FRAMES, STEPS = 128, 96, 9, 8
HOLD_STEP = 4  # the worker stops itself there (the fault-test hook) while the page shows the job running
JOB_TIMEOUT_MS = 600_000
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--autoplay-policy=no-user-gesture-required",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no name but the server's resolves
]


@contextlib.contextmanager
def missing_media(body: bytes) -> Iterator[str]:
    """A loopback URL whose video is there once (the check at submit) and 404 after: an input that is gone by
    the time the worker fetches it."""
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if served:
                self.send_response(404)
                self.end_headers()
                return
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/gone.mp4"
    finally:
        httpd.shutdown()


def _sse(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], fields.get("data", "")))
    return events


def _metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture()
def server(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", api_key=API_KEY, args=["--model", "tiny", "--allow-host", "127.0.0.1",
                                                        "--test-stop-at-step", str(HOLD_STEP)])
    srv.start(wait_ready=False)
    srv.wait_health(timeout=600)  # the worker loads the model first; a busy machine takes a while
    yield srv
    srv.stop()


def test_operator_page_in_headless_chromium(server: Server, tmp_path: Path):
    chromium = need_debian("chromium", "chromium")
    sync_api = need_python("playwright.sync_api", "playwright")
    from vace.pipelines.media.codec import write_mp4

    source = tmp_path / "source.mp4"
    ramp = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, None, :, None]
    write_mp4(np.broadcast_to(ramp, (FRAMES, HEIGHT, WIDTH, 3)).copy(), source, 16)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    requests: list[str] = []
    failed: dict[str, str] = {}  # url -> why the browser gave up on it
    blocked: list[str] = []
    base = server.base_url

    def shot(page, name: str, full_page: bool = True) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        print(f"screenshot: {path}")

    def card(page, prediction_id: str) -> str:
        return f"article.card[data-id='{prediction_id}']"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1200, "height": 900})

        def guard(route) -> None:  # anything not for the server is refused (and fails the test below)
            url = route.request.url
            if url.startswith((base + "/", "data:", "blob:")):
                route.continue_()
            else:
                blocked.append(url)
                route.abort()

        context.route("**/*", guard)
        context.on("request", lambda request: requests.append(request.url))
        context.on("requestfailed", lambda request: failed.__setitem__(request.url, request.failure or ""))
        page = context.new_page()

        # The key, once: the page asks for it and keeps it in the tab.
        page.goto(base + "/")
        page.wait_for_selector("#auth:not([hidden])")
        page.fill("#auth-key", API_KEY)
        page.click("#auth-form button")
        page.wait_for_selector("#connection.live")

        # Playground: a control video uploaded through the files API, a tiny size, few steps.
        form = "#playground-form"
        page.fill(f"{form} [name=prompt]", "a red fox in the snow")
        for name, value in (("width", WIDTH), ("height", HEIGHT), ("num_frames", FRAMES), ("steps", STEPS),
                            ("seed", 7)):
            page.fill(f"{form} [name={name}]", str(value))
        page.set_input_files(f"{form} [name=video_file]", str(source))
        # A LoRA picked from the server's library (GET /v1/loras fills the suggestions), and a field the form
        # has no control for, given as JSON.
        page.wait_for_selector("#lora-names option[value='tiny-style']", state="attached")
        page.click("#lora-add")
        page.fill("#lora-rows .lora [name=lora_ref]", "tiny-style")
        page.fill("#lora-rows .lora [name=lora_scale]", "0.5")
        page.click("#more-fields summary")
        page.fill(f"{form} [name=extra]", '{"conditioning_scale": 0.9}')
        shot(page, "01-playground")
        page.click("#submit")
        page.wait_for_function("() => document.querySelector('#submit-status').textContent.startsWith('Submitted')")
        first = page.text_content("#submit-status").split()[1].rstrip(".")
        # Record what the first job's card shows while it runs (the page updates it from the SSE feed).
        page.evaluate("""id => { window.seen = {progress: [], previews: []};
            setInterval(() => { const card = document.querySelector(`article.card[data-id='${id}']`); if (!card) return;
              const p = card.querySelector('progress').value, img = card.querySelector('img.preview');
              if (window.seen.progress.at(-1) !== p) window.seen.progress.push(p);
              if (!img.hidden && img.src.startsWith('data:image/jpeg') && !window.seen.previews.includes(img.src))
                window.seen.previews.push(img.src); }, 20); }""", first)
        with server.client() as http:
            worker_pid = http.get("/health").json()["worker"]["pid"]
        try:
            # The worker holds the job at step HOLD_STEP: the card shows the step before it, bar and preview.
            wait_for(lambda: stopped(worker_pid), "the worker to reach the hook's step")
            held = HOLD_STEP - 1
            page.wait_for_function(
                "([s, held, total]) => { const card = document.querySelector(s); if (!card) return false;"
                " const img = card.querySelector('img.preview');"
                " return card.querySelector('progress').value === 100 * held / total && !img.hidden"
                " && img.title === `after step ${held}/${total}`"
                " && card.querySelector('.step').textContent.trim() === `step ${held}/${total}`; }",
                arg=[f"#queue-list {card(page, first)}", held, STEPS])

            page.fill(f"{form} [name=prompt]", "a second job, cancelled from the queue")
            page.click("#submit")
            page.wait_for_function("first => { const text = document.querySelector('#submit-status').textContent; "
                                   "return text.startsWith('Submitted') && !text.includes(first); }", arg=first)
            second = page.text_content("#submit-status").split()[1].rstrip(".")
            page.wait_for_function("s => (document.querySelector(s)?.textContent || '').trim() === 'position 1'",
                                   arg=f"#queue-list {card(page, second)} .position")  # waits behind the first
            shot(page, "02-queue-running")
            page.click(f"#queue-list {card(page, second)} button.cancel")
            page.wait_for_selector(f"#history-list {card(page, second)} .status.canceled")
        finally:
            release(worker_pid)

        page.wait_for_selector(f"#history-list {card(page, first)} .status.succeeded", timeout=JOB_TIMEOUT_MS)
        page.wait_for_function("() => window.seen.progress.at(-1) === 100")
        seen = page.evaluate("() => window.seen")
        assert seen["progress"] == sorted(seen["progress"]) and 100 * held / STEPS in seen["progress"], seen["progress"]
        assert seen["previews"], "no live preview appeared while the job ran"

        # History: the finished video plays at the requested size.
        video = f"#history-list {card(page, first)} video"
        page.wait_for_function("s => document.querySelector(s).readyState >= 1", arg=video)
        page.evaluate("s => document.querySelector(s).play()", video)
        page.wait_for_function("s => document.querySelector(s).currentTime > 0", arg=video)
        played = page.evaluate("s => { const v = document.querySelector(s); "
                               "return {duration: v.duration, width: v.videoWidth, height: v.videoHeight}; }", video)
        assert (played["width"], played["height"]) == (WIDTH, HEIGHT)
        assert abs(played["duration"] - FRAMES / 16) < 0.1, played
        facts = page.text_content(f"{card(page, first)} .facts")
        assert facts.count("GPU seconds") == 1 and "tiny-style x0.5" in facts
        shot(page, "03-history")
        with server.client() as http:
            ran = http.get(f"/web/api/predictions/{first}", params={"preview": "false"}).json()
        assert ran["input"]["loras"] == [{"name": "tiny-style", "scale": 0.5}]
        assert ran["input"]["conditioning_scale"] == 0.9
        assert [(r["lora"], r["scale"]) for r in ran["loras"]] == [("tiny-style", 0.5)]  # the job ran with it

        # Run again fills the form with everything the first job asked for; what it submits is recorded on the
        # wire and refused there, so no fifth job runs.
        sent: list[dict] = []

        def capture(route) -> None:
            sent.append(json.loads(route.request.post_data or "{}"))
            route.abort()

        page.route(f"{base}/v1/models/vace/*/predictions", capture)
        page.fill(f"{form} [name=extra]", "")
        page.click("#lora-rows .lora .lora-remove")
        page.click(f"#history-list {card(page, first)} button.rerun")
        page.wait_for_function("id => document.querySelector('#submit-status').textContent === `Filled in from ${id}.`",
                               arg=first)
        assert page.input_value("#lora-rows .lora [name=lora_ref]") == "tiny-style"
        page.click("#submit")
        page.wait_for_function("() => document.querySelector('#submit-status').textContent.startsWith('Refused')")
        page.unroute(f"{base}/v1/models/vace/*/predictions")
        again = sent[0]["input"]
        assert again["loras"] == [{"name": "tiny-style", "scale": 0.5}] and again["conditioning_scale"] == 0.9
        assert again == ran["rerun"]  # every field of the first job, the uploaded video as its URL

        # The prediction's own page (Replicate's urls.web points here).
        with server.client() as http:
            web_url = http.get(f"/v1/predictions/{first}").json()["urls"]["web"]
        assert web_url == f"{base}/p/{first}"
        page.goto(web_url)
        page.wait_for_selector(f"#detail-card {card(page, first)} video")
        shot(page, "04-prediction-page")

        page_requests = list(requests)

        # Offline API docs, in the same browser.
        page.goto(base + "/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        assert "VACE server" in page.text_content(".swagger-ui .info .title")
        page.wait_for_selector(".opblock-tag")
        shot(page, "05-docs")
        page.goto(base + "/redoc")
        page.wait_for_selector("redoc .api-content h1", timeout=60_000)
        shot(page, "06-redoc", full_page=False)  # the whole reference is too tall for one picture
        browser.close()

    ours = (base + "/", "data:", "blob:")
    assert not blocked, f"the browser tried to reach beyond the server: {blocked}"
    assert page_requests and all(u.startswith(ours) for u in page_requests), page_requests
    # The docs: ReDoc's bundle asks for its maker's logo on a CDN; the page's CSP stops it inside the browser.
    outside = [u for u in requests if not u.startswith(ours)]
    assert all(failed.get(u) == "csp" for u in outside), (outside, failed)
    print(f"the page made {len(page_requests)} requests, all to {base}; the docs {len(requests) - len(page_requests)}, "
          f"and {len(outside)} more the browser refused itself (CSP): {outside}")

    with missing_media(source.read_bytes()) as gone, webhook_receiver() as hook, server.client() as http:
        # A third job whose input cannot be fetched fails in the worker.
        third = http.post("/v1/models/vace/tiny/predictions", json={
            "input": {"prompt": "x", "video": gone, "width": 32, "height": 32, "num_frames": 5, "steps": 1},
            "webhook": hook.url, "webhook_events_filter": ["completed"]}).json()
        with http.stream("GET", f"/v1/predictions/{third['id']}/stream") as stream:
            assert ("done", "{}") in _sse(stream.read().decode())
        assert http.get(f"/v1/predictions/{third['id']}").json()["status"] == "failed"
        hook.wait(1)

        assert http.get("/metrics", headers={"Authorization": ""}).status_code == 401
        delivered = ("vace_webhook_deliveries_total", (("outcome", "delivered"),))
        # The receiver records the webhook before it answers; the server counts it only once the answer is in.
        samples = wait_for(lambda: (s := _metric_samples(http.get("/metrics").text)).get(delivered) and s,
                           "the delivered webhook in the metrics", timeout=30)
        for outcome in ("succeeded", "canceled", "failed"):
            assert samples[("vace_predictions_total", (("endpoint", "vace/tiny"), ("outcome", outcome)))] == 1
        assert samples[("vace_input_fetch_failures_total", ())] == 1
        assert samples[delivered] == 1
        assert samples[("vace_queue_depth", (("state", "queued"),))] == 0
        assert samples[("vace_denoising_step_seconds_count", ())] == STEPS - 1  # the first step holds set-up
        assert samples[("vace_gpu_seconds_total", ())] > 0
        assert [v for (name, _), v in samples.items() if name == "vace_worker_up"] == [1.0]

        # Previews through the API, opted in per prediction: on its SSE stream and its webhook.
        fourth = http.post("/v1/models/vace/tiny/predictions", json={
            "input": {"prompt": "y", "width": 32, "height": 32, "num_frames": 5, "steps": 2}, "previews": True,
            "webhook": hook.url, "webhook_events_filter": ["preview", "completed"]}).json()
        with http.stream("GET", f"/v1/predictions/{fourth['id']}/stream") as stream:
            events = _sse(stream.read().decode())
        previews = [json.loads(data) for kind, data in events if kind == "preview"]
        assert previews and previews[-1]["image"].startswith("data:image/jpeg;base64,"), events
        assert {p["total"] for p in previews} == {2}
        hooked = [json.loads(body) for _, body in hook.wait(3)]
        assert [b["preview"]["step"] for b in hooked if b["id"] == fourth["id"] and "preview" in b], hooked
