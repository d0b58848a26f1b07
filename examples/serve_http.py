"""An HTTP endpoint for selfseg-fast (FastAPI + uvicorn): POST an image, get names and a label PNG.

    pip install "selfseg-fast[serve]"          # fastapi, uvicorn, python-multipart
    python examples/serve_http.py --weights random-tiny --port 8000
    curl -s --data-binary @photo.jpg http://127.0.0.1:8000/segment   # raw body
    curl -s -F file=@photo.jpg http://127.0.0.1:8000/segment         # multipart upload
    curl -s http://127.0.0.1:8000/health                             # liveness (always 200)
    curl -s http://127.0.0.1:8000/ready                              # readiness (503 while loading)
    curl -s --data-binary @photo.jpg 'http://127.0.0.1:8000/segment?deadline_ms=800'  # a deadline

Response (200): {"names": [...], "shares": {name: pixel share}, "captions": {...}, "degraded": false,
"mask_png_base64": "<label PNG: palette PNG, pixel value = index into names, 255 = unlabelled; 16-bit
with 65535 = unlabelled above 255 names>"}. Deadlines: `?deadline_ms=N` (or the server's --deadline-ms)
counts from the request's arrival; the caption cycles stop in time for the answer (selfseg_fast.serving)
and the answer says "degraded": true with the names found so far. Query parameters for names (off by
default; `--consolidate`/`--taxonomy` set the server's defaults): `consolidate=specific|general|off`,
`consolidate_overlap=0.6`, `same_cluster_only=true`, `taxonomy=cityscapes|ade20k|voc`; the answer then
also has "merges" ([{kept, merged, rule, score}]) and "taxonomy" ({name, labels, other_id, mapping}),
and "names" are the kept nouns or the taxonomy's labels (stable ids, `other` last):
    curl -s --data-binary @photo.jpg "http://127.0.0.1:8000/segment?consolidate=specific&taxonomy=voc"
Every refusal is JSON {"detail": "<one line>"}:
  400 empty body, malformed multipart, unreadable image, a bad query parameter (deadline_ms not a
      positive number, an unknown consolidate/taxonomy value)
  408 body not received within --body-timeout
  413 body over --max-body-mb (checked on Content-Length before reading, then while streaming), image
      over the pixel limit, or any request the pipeline refuses as over budget (ResourceError)
  415 not an image   422 an image the pipeline cannot process
  503 still loading, or the queue is full (Retry-After)   500 anything else, with its one-line reason
  504 the deadline passed while the request was queued (not run: it would have had no names)
The engine is chosen as the CLI chooses it (fast on CUDA, reference on CPU; --engine to force). The
server listens at once and loads the models in the background (/ready says when); decoding and response
encoding run on worker threads, so /health never waits for an image. Concurrent requests are micro-
batched (selfseg_fast.serving); a client that disconnects before its request started loses its place.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from selfseg_fast.config import TAXONOMY_BUILTINS
from selfseg_fast.errors import ImageError, ResourceError, SelfSegError
from selfseg_fast.images import ImageTooLargeError, load_image_bytes
from selfseg_fast.label_maps import label_png_bytes, pixel_shares
from selfseg_fast.pipeline import naming_overrides
from selfseg_fast.serving import DeadlineExceeded, SelfSegService, ServiceBusy, ServiceConfig

log = logging.getLogger("selfseg_fast.http")


@dataclass
class HttpLimits:
    max_body_bytes: int = 32 * 2**20  # upload size cap (raw or multipart)
    body_timeout_s: float = 30.0  # the whole body must arrive within this (slow-body clients)
    decode_workers: int = 2  # threads decoding uploads and encoding responses
    max_inflight: int = 32  # requests being read, decoded or served at once; more get 503


class Refused(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.headers = status, " ".join(reason.split()), headers or {}


class ServiceHolder:
    """The service, or why it is not there yet (loading in the background, or failed to load)."""

    def __init__(self, service: SelfSegService | Callable[[], SelfSegService]) -> None:
        is_service = hasattr(service, "asegment")
        self.service = service if is_service else None
        self.factory = None if is_service else service
        self.state = "ready" if self.service else "loading"

    def load(self) -> None:
        start = time.perf_counter()
        log.info("loading models and warming up")
        try:
            self.service = self.factory()
        except BaseException as exc:  # noqa: BLE001 - reported on /ready and in the log
            self.state = f"failed: {' '.join(str(exc).split())}"
            log.error("model loading failed: %s", exc)
            return
        self.state = "ready"
        log.info(
            "ready in %.1f s (warm-up %.1f s; engine %s)",
            time.perf_counter() - start,
            self.service.warmup_seconds,
            self.service.cfg.engine,
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.service is not None and self.service.ready


def create_app(
    service: SelfSegService | Callable[[], SelfSegService], limits: HttpLimits | None = None
) -> FastAPI:
    """The app around a ready service, or a factory that builds one in the background at startup."""
    limits = limits or HttpLimits()
    holder = ServiceHolder(service)
    workers = ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="selfseg-http")
    inflight = {"n": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if holder.factory is not None:
            threading.Thread(target=holder.load, name="selfseg-load", daemon=True).start()
        else:
            log.info("ready (engine %s)", holder.service.cfg.engine)
        yield
        workers.shutdown(wait=False, cancel_futures=True)
        if holder.service is not None:
            holder.service.close()

    app = FastAPI(title="selfseg-fast", lifespan=lifespan)
    app.state.holder = holder

    @app.get("/health")
    def health() -> dict:
        service = holder.service
        return {
            "status": "ok",
            "ready": holder.ready,
            "state": holder.state,
            "engine": service.cfg.engine if service else None,
            "weights": service.cfg.weights if service else None,
            "queued": service.batcher.queue_depth if service else 0,
            "inflight": inflight["n"],
        }

    @app.get("/ready")
    def ready() -> JSONResponse:
        return JSONResponse({"ready": holder.ready, "state": holder.state}, 200 if holder.ready else 503)

    @app.post("/segment")
    async def segment(request: Request) -> Response:
        if inflight["n"] >= limits.max_inflight:
            return _refusal(
                Refused(503, "busy: too many requests in flight; retry shortly", {"Retry-After": "1"})
            )
        inflight["n"] += 1
        try:
            return await _segment(request, holder, limits, workers)
        except Refused as refused:
            return _refusal(refused)
        except Exception as exc:  # a bug: still one line for the client, the traceback in the log
            log.exception("request failed")
            return _refusal(Refused(500, f"internal error: {_one_line(exc)}"))
        finally:
            inflight["n"] -= 1

    return app


async def _segment(request: Request, holder: ServiceHolder, limits: HttpLimits, workers) -> Response:
    if not holder.ready:
        raise Refused(503, f"not ready ({holder.state}); retry shortly", {"Retry-After": "5"})
    service = holder.service
    deadline_ms = query_deadline(request)
    body = await read_body(request, limits)
    loop = asyncio.get_running_loop()
    content_type = request.headers.get("content-type", "")
    naming = request_naming(request.query_params, service)  # before decoding: a bad value is a 400
    image = await loop.run_in_executor(workers, decode_upload, body, content_type, service)
    del body
    if naming:
        image = dataclasses.replace(image, naming=naming)
    work = asyncio.ensure_future(service.asegment(image, deadline_ms))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not work.done():  # the client left: drop its request if it has not started
        work.cancel()
        log.info("client disconnected; request dropped")
        return Response(status_code=499)
    try:
        result = work.result()
    except ServiceBusy as exc:
        raise Refused(503, str(exc), {"Retry-After": "1"}) from exc
    except DeadlineExceeded as exc:
        raise Refused(504, str(exc)) from exc
    except ResourceError as exc:
        raise Refused(413, str(exc)) from exc
    except ImageError as exc:
        raise Refused(422, str(exc)) from exc
    except Exception as exc:
        log.exception("segmentation failed")
        raise Refused(500, f"segmentation failed: {_one_line(exc)}") from exc
    payload = await loop.run_in_executor(workers, render_response, result)
    return Response(payload, media_type="application/json")


def query_deadline(request: Request) -> float | None:
    """`?deadline_ms=N`: a positive number of milliseconds (None: the server's default)."""
    raw = request.query_params.get("deadline_ms")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise Refused(400, f"deadline_ms={raw!r}: must be a positive number of milliseconds")
    return value


async def read_body(request: Request, limits: HttpLimits) -> bytes:
    """The body, refused early when Content-Length is over the cap, and capped while it streams (a body
    without Content-Length, or one longer than announced, is cut off at the cap); all of it must arrive
    within `body_timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limits.max_body_bytes:
            raise Refused(
                413, f"body of {int(declared)} bytes exceeds the {limits.max_body_bytes} byte limit"
            )
    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise Refused(413, f"body exceeds the {limits.max_body_bytes} byte limit")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise Refused(408, f"body not received within {limits.body_timeout_s:.0f} s") from None
    body = b"".join(chunks)
    if not body:
        raise Refused(
            400, "empty request body: POST the image file's bytes, or a multipart upload (-F file=@x)"
        )
    return body


NAMING_PARAMS = ("consolidate", "consolidate_overlap", "same_cluster_only", "taxonomy")


def request_naming(params, service: SelfSegService) -> tuple:
    """?consolidate=specific|general|off&consolidate_overlap=0.6&same_cluster_only=true&taxonomy=voc
    -> the request's config overrides (selfseg_fast.pipeline.naming_overrides); 400 on a bad value.
    A taxonomy is a built-in name here (a client never names a file on the server: start the server
    with --taxonomy FILE for that)."""
    if not any(key in params for key in NAMING_PARAMS):
        return ()
    consolidate: dict = {}
    if "consolidate" in params:
        consolidate["mode"] = params["consolidate"]
    try:
        if "consolidate_overlap" in params:
            consolidate["overlap_threshold"] = float(params["consolidate_overlap"])
    except ValueError:
        value = params["consolidate_overlap"]
        raise Refused(400, f"consolidate_overlap={value!r}: expected a number in (0, 1]") from None
    if "same_cluster_only" in params:
        flag = params["same_cluster_only"].lower()
        if flag not in ("true", "false", "1", "0"):
            raise Refused(400, f"same_cluster_only={flag!r}: expected true or false")
        consolidate["same_cluster_only"] = flag in ("true", "1")
    taxonomy = params.get("taxonomy")
    if taxonomy is not None and taxonomy not in TAXONOMY_BUILTINS:
        raise Refused(400, f"taxonomy={taxonomy!r}: use one of {', '.join(TAXONOMY_BUILTINS)}")
    try:
        naming = naming_overrides(consolidate or None, taxonomy)
        planner = getattr(service.pipeline, "planner", None)
        if planner is not None:
            planner(naming)  # validates the values (one line) and loads the label set once
    except SelfSegError as exc:
        raise Refused(400, str(exc)) from exc
    return naming


def decode_upload(body: bytes, content_type: str, service: SelfSegService):
    """Raw bytes or the file part of a multipart upload -> LoadedImage (worker thread)."""
    name = "upload"
    if content_type.lower().startswith("multipart/form-data"):
        name, body = multipart_file(body, content_type)
    try:
        image = load_image_bytes(body, name)
    except ImageTooLargeError as exc:
        raise Refused(413, str(exc)) from exc
    except ImageError as exc:
        raise Refused(415 if "not an image" in str(exc) else 400, str(exc)) from exc
    try:
        service.check(image)
    except ResourceError as exc:
        raise Refused(413, str(exc)) from exc
    return image


def multipart_file(body: bytes, content_type: str) -> tuple[str, bytes]:
    """(file name, bytes) of the upload's file part: the field "file" or "image", else the first part
    with a file name, else the only part. Parsed with python-multipart (FastAPI's own parser)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart upload without a boundary")
    parts: list[dict] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": [], "complete": False})

    def on_part_end() -> None:
        parts[-1]["complete"] = True

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].append(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:
        raise Refused(400, f"malformed multipart upload ({_one_line(exc)})") from exc
    parts = [part for part in parts if part["complete"]]
    if not parts:
        raise Refused(400, "malformed multipart upload (no complete part); send it as -F file=@photo.jpg")
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get("content-disposition", b""))
        part["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = disposition.get(b"filename", b"").decode("utf-8", "replace")
    chosen = (
        next((p for p in parts if p["name"] in ("file", "image")), None)
        or next((p for p in parts if p["filename"]), None)
        or (parts[0] if len(parts) == 1 else None)
    )
    if chosen is None:
        raise Refused(400, "multipart upload without a file part: send it as -F file=@photo.jpg")
    return chosen["filename"] or chosen["name"] or "upload", b"".join(chosen["data"])


def render_response(result) -> bytes:
    """The JSON answer (worker thread: the PNG and base64 encoding of a large map take time)."""
    payload = {
        "names": result.class_names,
        "shares": pixel_shares(result.label_map, result.class_names),
        "captions": {str(k): v for k, v in result.description.captions.items()},
        "degraded": bool(result.description.degraded),
        "mask_png_base64": base64.b64encode(
            label_png_bytes(result.label_map, len(result.class_names))
        ).decode(),
    }
    if hasattr(result, "audit"):  # "merges" / "taxonomy" when consolidation / a taxonomy is on
        payload.update(result.audit())
    return json.dumps(payload).encode()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body is already read, so only a disconnect comes)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _refusal(refused: Refused) -> JSONResponse:
    if refused.status >= 500:
        log.warning("HTTP %d: %s", refused.status, refused.reason)
    return JSONResponse({"detail": refused.reason}, refused.status, headers=refused.headers)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SelfSegError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def main(argv: list[str] | None = None) -> None:
    from selfseg_fast.commands.options import (
        add_config_options,
        add_naming_options,
        add_segmenter_options,
        config_from_args,
    )
    from selfseg_fast.console import configure

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8, help="images per micro-batch")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for company")
    parser.add_argument("--max-queue", type=int, default=64, help="queued requests; more get 503")
    parser.add_argument("--max-pixels", type=int, default=50_000_000, help="per image; more get 413")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="upload size; more get 413")
    parser.add_argument("--body-timeout", type=float, default=30.0, help="seconds for the whole body")
    add_naming_options(parser)  # server-wide defaults; a request may override them (query parameters)
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=None,
        help="default per-request deadline from arrival (ms; ?deadline_ms= overrides): the caption "
        "cycles stop in time and the answer says degraded; none by default",
    )
    add_segmenter_options(parser)
    add_config_options(parser)
    args = parser.parse_args(argv)
    configure(0)
    cfg = config_from_args(args)  # engine as the CLI chooses it: fast on CUDA, reference on CPU
    options = ServiceConfig(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_pixels=args.max_pixels,
        deadline_ms=args.deadline_ms,
    )
    limits = HttpLimits(max_body_bytes=int(args.max_body_mb * 2**20), body_timeout_s=args.body_timeout)
    import uvicorn

    log.info(
        "listening on http://%s:%d (engine %s, weights %s)", args.host, args.port, cfg.engine, cfg.weights
    )
    app = create_app(lambda: SelfSegService(cfg, options), limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=5)


if __name__ == "__main__":
    main()
