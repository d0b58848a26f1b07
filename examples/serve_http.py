"""An HTTP endpoint for selfseg-fast (FastAPI + uvicorn): POST an image, get names and a PNG mask.

    pip install fastapi uvicorn
    python examples/serve_http.py --weights random-tiny --port 8000
    curl -s --data-binary @photo.jpg http://127.0.0.1:8000/segment

Response (200): {"names": [...], "shares": {name: pixel share}, "captions": {...},
"mask_png_base64": "<8-bit PNG: pixel value = index into names, 255 = unlabelled>"}.
Malformed requests get a 4xx with a one-line reason (400 unreadable image, 413 too large,
415 not an image) and the server keeps serving. Concurrent requests are micro-batched.
"""

from __future__ import annotations

import argparse
import base64
import tempfile

from fastapi import FastAPI, HTTPException, Request

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import ImageError
from selfseg_fast.images import load_image
from selfseg_fast.label_maps import label_png_bytes, pixel_shares
from selfseg_fast.serving import SelfSegService, ServiceConfig

MAX_BODY_BYTES = 32 * 2**20


def create_app(service: SelfSegService):
    """The FastAPI app around a ready service (separate so tests can build it in-process)."""
    app = FastAPI(title="selfseg-fast")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "engine": service.cfg.engine, "weights": service.cfg.weights}

    @app.post("/segment")
    async def segment(request: Request) -> dict:
        body = await request.body()
        if not body:
            raise HTTPException(400, "empty request body: POST the image file's bytes")
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"image larger than {MAX_BODY_BYTES} bytes")
        image = _decode(body)
        result = await service.asegment(image)
        return _response(result)

    return app


def _decode(body: bytes):
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(body)
        handle.flush()
        try:
            image = load_image(handle.name)
        except ImageError as exc:
            reason = str(exc).split(": ", 1)[-1]
            raise HTTPException(415 if "not an image" in reason else 400, reason) from exc
    image.path = "request"
    return image


def _response(result) -> dict:
    return {
        "names": result.class_names,
        "shares": pixel_shares(result.label_map, result.class_names),
        "captions": {str(k): v for k, v in result.description.captions.items()},
        "mask_png_base64": base64.b64encode(label_png_bytes(result.label_map)).decode(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="voc")
    parser.add_argument("--weights", default="pretrained", choices=["pretrained", "random", "random-tiny"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    args = parser.parse_args()
    import uvicorn

    cfg = SelfSegConfig.from_preset(args.preset).with_overrides({"weights": args.weights})
    service = SelfSegService(cfg, ServiceConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms))
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
