"""The HTTP example (examples/serve_http.py) against a model-free service: uploads raw and multipart,
Content-Length and streamed caps, slow bodies, decoding off the event loop, one-line reasons per error
class, readiness, engine choice, and dropped requests of clients that left."""

from __future__ import annotations

import base64
import importlib.util
import io
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")

from selfseg_fast.config import SelfSegConfig  # noqa: E402
from selfseg_fast.errors import ResourceError  # noqa: E402
from selfseg_fast.pipeline import Segmentation  # noqa: E402
from selfseg_fast.records import ImageResult  # noqa: E402
from selfseg_fast.serving import SelfSegService, ServiceConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("serve_http", ROOT / "examples" / "serve_http.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_http"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class FakePipeline:
    """Left half name 0, right half name 1. Pixel value 200 -> ResourceError, 201 -> RuntimeError;
    `gate` (an Event) holds every batch until set; `seen` records the images run."""

    def __init__(self) -> None:
        self.gate: threading.Event | None = None
        self.seen: list[int] = []
        self.deadlines: list[float | None] = []  # each image's caption deadline as run
        self.entered = False

    def run(self, images):
        self.entered = True
        if self.gate is not None:
            self.gate.wait(10)
        out = []
        for image in images:
            value = int(image.rgb[0, 0, 0])
            self.seen.append(value)
            self.deadlines.append(image.deadline)
            if value == 200:
                raise ResourceError("needs 9 GiB, over the 4 GiB budget (segmenter.memory_budget)")
            if value == 201:
                raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
            h, w = image.rgb.shape[:2]
            label_map = np.zeros((h, w), np.int64)
            label_map[:, w // 2 :] = 1
            result = ImageResult(image.path, [[0] * 32] * 32, {0: ["a cat"]}, {0: ["cat"]}, ["cat", "dog"])
            result.degraded = value == 77  # stands for an image whose caption deadline passed
            out.append(Segmentation(result, ["cat", "dog"], label_map))
        return out

    def describe(self, images):
        return [None] * len(images)


def _until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _jpeg(value: int = 90, size=(30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def served():
    """(base URL, fake pipeline, module, limits) of a real uvicorn server on a free port."""
    import uvicorn

    module = _module()
    pipeline = FakePipeline()
    service = SelfSegService(
        SelfSegConfig(),
        ServiceConfig(warmup=False, max_batch=1, max_wait_ms=1, max_queue=4, max_pixels=5_000),
        pipeline=pipeline,
    )
    limits = module.HttpLimits(max_body_bytes=20_000, body_timeout_s=0.6)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(module.create_app(service, limits), port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", pipeline, module, limits
    if pipeline.gate is not None:
        pipeline.gate.set()
    server.should_exit = True
    thread.join(10)


def _raw(url: str, head: bytes, body: bytes = b"", pause: float = 0.0) -> tuple[int, bytes, float]:
    """Send raw HTTP; returns (status, response bytes, seconds until the answer)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(head)
        if pause:
            time.sleep(pause)
        if body:
            sock.sendall(body)
        data = sock.recv(65536)
        seconds = time.monotonic() - start
        head_end = data.find(b"\r\n\r\n")
        length = (
            int(data.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if b"content-length" in data.lower()
            else 0
        )
        while len(data) < head_end + 4 + length:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        return int(data.split(b" ", 2)[1]), data, seconds


def test_raw_and_multipart_uploads_give_the_same_answer(served):
    url, *_ = served
    raw = httpx.post(f"{url}/segment", content=_jpeg())
    multi = httpx.post(f"{url}/segment", files={"file": ("photo.png", _jpeg(), "image/png")})
    other_field = httpx.post(f"{url}/segment", files={"upload": ("p.png", _jpeg(), "image/png")})
    assert raw.status_code == multi.status_code == other_field.status_code == 200
    assert raw.json() == multi.json() == other_field.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(raw.json()["mask_png_base64"]))))
    assert mask.shape == (30, 40) and set(np.unique(mask)) == {0, 1}
    assert raw.json()["shares"] == {"cat": 0.5, "dog": 0.5}
    no_file = httpx.post(f"{url}/segment", data={"note": "x"}, files={"a": ("", b"")})
    assert no_file.status_code in (400, 415) and no_file.json()["detail"]
    broken = httpx.post(
        f"{url}/segment",
        content=b"--xx\r\nnonsense",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert broken.status_code == 400 and "multipart" in broken.json()["detail"]


def test_content_length_over_the_cap_is_refused_before_the_body(served):
    url, _, _, limits = served
    head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
    status, data, seconds = _raw(url, head)  # no body is ever sent
    assert status == 413 and b"exceeds" in data and seconds < limits.body_timeout_s


def test_a_body_without_content_length_is_capped_while_streaming(served):
    url, *_ = served

    def chunks():
        for _ in range(100):
            yield b"\0" * 1000

    response = httpx.post(f"{url}/segment", content=chunks())  # chunked transfer, 100 kB > 20 kB
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_a_slow_body_times_out_with_408(served):
    url, _, _, limits = served
    head = b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, data, seconds = _raw(url, head, b"x" * 10, pause=0.0)  # 90 bytes never come
    assert status == 408 and limits.body_timeout_s <= seconds < 5


def test_health_answers_while_an_image_is_decoding(served, monkeypatch):
    url, _, module, _ = served
    slow_decode = module.load_image_bytes

    def slow(*args, **kwargs):
        time.sleep(3.0)
        return slow_decode(*args, **kwargs)

    monkeypatch.setattr(module, "load_image_bytes", slow)
    thread = threading.Thread(target=lambda: httpx.post(f"{url}/segment", content=_jpeg(), timeout=20))
    thread.start()
    _until(lambda: httpx.get(f"{url}/health").json()["inflight"] == 1)
    start = time.monotonic()
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["ready"] is True
    assert time.monotonic() - start < 1.5  # decoding (3 s) runs on a worker thread
    thread.join(20)


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"", 400, "empty"),
        (b"hello, not an image", 415, "not an image"),
        (_jpeg()[:60], 400, "upload"),
        (_jpeg(90, (80, 80)), 413, "MPix"),  # 6,400 px over the service's 5,000
        (_jpeg(200), 413, "budget"),  # the pipeline's ResourceError
        (_jpeg(201), 500, "RuntimeError: CUDA error"),
    ],
)
def test_every_refusal_has_its_status_and_a_one_line_reason(served, body, status, words):
    url, *_ = served
    response = httpx.post(f"{url}/segment", content=body)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert words in detail and "\n" not in detail
    assert httpx.post(f"{url}/segment", content=_jpeg()).status_code == 200  # still serving


def test_a_full_queue_gets_503_with_retry_after(served):
    url, pipeline, *_ = served
    pipeline.gate = threading.Event()
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{url}/segment", content=_jpeg(), timeout=20).status_code
            )
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    _until(lambda: httpx.get(f"{url}/health").json()["queued"] == 4)  # 1 running + 4 queued (max_queue)
    busy = httpx.post(f"{url}/segment", content=_jpeg())
    assert busy.status_code == 503 and busy.headers["retry-after"] and "busy" in busy.json()["detail"]
    pipeline.gate.set()
    for t in threads:
        t.join(20)
    assert results.count(200) >= 5


def test_a_client_that_leaves_loses_its_queued_request(served):
    url, pipeline, *_ = served
    pipeline.gate = threading.Event()
    first = threading.Thread(target=lambda: httpx.post(f"{url}/segment", content=_jpeg(90), timeout=20))
    first.start()
    _until(lambda: pipeline.entered)  # the first batch is held inside the pipeline
    body = _jpeg(77)
    head = f"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + body)
        _until(lambda: httpx.get(f"{url}/health").json()["queued"] == 1)  # decoded and queued
    _until(lambda: httpx.get(f"{url}/health").json()["queued"] == 0)  # dropped once the client left
    pipeline.gate.set()
    first.join(20)
    assert httpx.post(f"{url}/segment", content=_jpeg(91)).status_code == 200
    assert 77 not in pipeline.seen and 90 in pipeline.seen and 91 in pipeline.seen


def test_readiness_while_loading_and_logged(caplog):
    from fastapi.testclient import TestClient

    module = _module()
    release = threading.Event()

    def factory():
        release.wait(10)
        return SelfSegService(SelfSegConfig(), ServiceConfig(warmup=False), pipeline=FakePipeline())

    with caplog.at_level("INFO", logger="selfseg_fast"), TestClient(module.create_app(factory)) as client:
        assert client.get("/health").json()["state"] == "loading"
        assert client.get("/ready").status_code == 503
        loading = client.post("/segment", content=_jpeg())
        assert loading.status_code == 503 and "loading" in loading.json()["detail"]
        release.set()
        for _ in range(100):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert client.get("/ready").status_code == 200
        assert client.post("/segment", content=_jpeg()).status_code == 200
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "loading models" in messages and "ready in" in messages


def test_the_engine_is_chosen_like_the_cli(monkeypatch):
    import torch
    import uvicorn

    module = _module()
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    module.main(["--weights", "random-tiny", "--port", "9"])
    assert seen["port"] == 9
    holder = seen["app"].state.holder
    assert holder.factory is not None  # models load in the background once the server runs
    monkeypatch.setattr(module, "SelfSegService", lambda cfg, options: seen.update(cfg=cfg))
    module.main(["--weights", "random-tiny"])
    seen["app"].state.holder.factory()
    assert seen["cfg"].engine == "fast"  # the default engine, as `selfseg-fast` picks it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module.main(["--weights", "random-tiny"])
    seen["app"].state.holder.factory()
    assert seen["cfg"].engine == "fast"  # on a CPU too (it needs no crfseg and is the faster one there)
    module.main(["--weights", "random-tiny", "--engine", "reference"])
    seen["app"].state.holder.factory()
    assert seen["cfg"].engine == "reference"


def test_deadline_query_parameter_reaches_the_pipeline_and_degraded_comes_back(served):
    url, pipeline, *_ = served
    plain = httpx.post(f"{url}/segment", content=_jpeg())
    assert plain.status_code == 200 and plain.json()["degraded"] is False and pipeline.deadlines == [None]
    sent = time.monotonic()
    cut = httpx.post(f"{url}/segment?deadline_ms=5000", content=_jpeg(77))
    assert cut.status_code == 200 and cut.json()["degraded"] is True
    assert sent < pipeline.deadlines[-1] <= time.monotonic() + 5.0  # the request's own deadline
    for bad in ("0", "-3", "soon", "nan", "inf"):
        refused = httpx.post(f"{url}/segment?deadline_ms={bad}", content=_jpeg())
        assert refused.status_code == 400 and "deadline_ms" in refused.json()["detail"]


def test_a_deadline_that_passes_in_the_queue_gets_504_unrun(served):
    url, pipeline, *_ = served
    pipeline.gate = threading.Event()
    first = threading.Thread(target=lambda: httpx.post(f"{url}/segment", content=_jpeg(90), timeout=20))
    first.start()
    _until(lambda: pipeline.entered)  # the first request holds the worker
    answer: list = []
    late = threading.Thread(
        target=lambda: answer.append(
            httpx.post(f"{url}/segment?deadline_ms=50", content=_jpeg(91), timeout=20)
        )
    )
    late.start()
    _until(lambda: httpx.get(f"{url}/health").json()["queued"] == 1)
    time.sleep(0.1)  # its 50 ms pass while it waits
    pipeline.gate.set()
    first.join(20)
    late.join(20)
    assert answer[0].status_code == 504 and "deadline passed while queued" in answer[0].json()["detail"]
    assert 91 not in pipeline.seen  # not run
