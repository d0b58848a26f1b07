"""Load test of the HTTP example (examples/serve_http.py): p50/p99 latency and images/s per concurrency.

    python benchmarks/load_test.py --weights random-tiny --concurrency 1 4 16 --requests 64

Starts the server in-process on 127.0.0.1 (a free port), sends a bounded number of requests per
concurrency level from a thread pool, then malformed requests (empty body, text, truncated JPEG),
which must get a 4xx with a reason, and checks the server still answers a good request afterwards.
Traffic goes to the loopback address only.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from serve_http import create_app  # noqa: E402

from selfseg_fast.config import SelfSegConfig  # noqa: E402
from selfseg_fast.serving import SelfSegService, ServiceConfig  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(service: SelfSegService, port: int):
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            return server, thread
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def post(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def jpeg_bytes(seed: int, size: tuple[int, int] = (240, 320)) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    return buffer.getvalue()


def run_level(url: str, concurrency: int, n_requests: int) -> dict:
    bodies = [jpeg_bytes(i) for i in range(n_requests)]
    latencies: list[float] = []

    def one(body: bytes) -> int:
        start = time.perf_counter()
        status, _ = post(url, body)
        latencies.append(time.perf_counter() - start)
        return status

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "ok": sum(s == 200 for s in statuses),
        "p50_ms": 1000 * cuts[49],
        "p99_ms": 1000 * cuts[98],
        "images_per_s": n_requests / wall,
    }


def malformed_checks(url: str) -> list[dict]:
    good = jpeg_bytes(0)
    cases = {"empty body": b"", "text": b"hello, not an image", "truncated jpeg": good[: len(good) // 3]}
    out = []
    for name, body in cases.items():
        status, payload = post(url, body)
        out.append({"case": name, "status": status, "reason": payload.get("detail")})
    status, _ = post(url, good)
    out.append({"case": "good request after the bad ones", "status": status, "reason": None})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="random-tiny", choices=["pretrained", "random", "random-tiny"])
    parser.add_argument("--preset", default="voc")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args(argv)

    cfg = SelfSegConfig.from_preset(args.preset).with_overrides({"weights": args.weights})
    service = SelfSegService(cfg, ServiceConfig(max_batch=args.max_batch))
    port = free_port()
    server, thread = start_server(service, port)
    url = f"http://127.0.0.1:{port}/segment"
    try:
        levels = [run_level(url, c, args.requests) for c in args.concurrency]
        bad = malformed_checks(url)
    finally:
        server.should_exit = True
        thread.join(10)
        service.close()
    print("| concurrency | requests | ok | p50 ms | p99 ms | images/s |")
    print("|---|---|---|---|---|---|")
    for r in levels:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['ok']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['images_per_s']:.2f} |"
        )
    for r in bad:
        print(f"{r['case']}: HTTP {r['status']} {r['reason'] or ''}")
    healthy = all(400 <= r["status"] < 500 for r in bad[:-1]) and bad[-1]["status"] == 200
    return 0 if healthy and all(r["ok"] == r["requests"] for r in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
