"""The whole self-guided pipeline behind the `label` command and the HTTP serving example
(random-tiny weights for BLIP and X-Decoder)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("selfseg_fast.models.xdecoder.segmenter")

from selfseg_fast.cli import main  # noqa: E402
from selfseg_fast.config import SelfSegConfig  # noqa: E402
from selfseg_fast.label_maps import read_label_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _write_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = np.zeros((96, 128, 3), np.uint8)
        rgb[:48] = rng.integers(0, 255, 3)
        rgb[48:] = rng.integers(0, 255, 3)
        Image.fromarray(rgb).save(folder / f"photo{i}.png")


def test_label_folder_resumes_and_ray_gives_the_same(tmp_path):
    _write_images(tmp_path / "in", 3)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG broken")
    # a 1 x 3000 image: the loader accepts it, so it must label or get its own error line, never take its
    # batch down (issue 13.7)
    Image.fromarray(np.full((1, 3000, 3), 90, np.uint8)).save(tmp_path / "in" / "thin.png")
    args = ["label", str(tmp_path / "in"), "--weights", "random-tiny", "--set", "caption.cycles=1"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 1  # the broken file fails, the rest is written
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")}
    assert {"photo0.png.json", "photo1.png.json", "photo2.png.json"} <= set(records)
    assert "broken.png" in json.loads((tmp_path / "out" / "failed.json").read_text())["failed"]
    assert "broken.png.json" not in records  # a failure is not marked done
    for name in ("photo0.png", "photo1.png", "photo2.png"):
        labels = read_label_png(tmp_path / "out" / f"{name}.labels.png")
        assert labels.shape == (96, 128)
        assert set(np.unique(labels)) <= set(range(len(records[f"{name}.json"]["names"]))) | {-1}
    stamp = (tmp_path / "out" / "photo0.png.json").stat().st_mtime_ns
    assert main([*args, "--out", str(tmp_path / "out")]) == 1  # resumed: only the failed files again
    assert (tmp_path / "out" / "photo0.png.json").stat().st_mtime_ns == stamp

    pytest.importorskip("ray")
    assert main([*args, "--out", str(tmp_path / "ray"), "--ray", "local"]) == 1
    for name in ("photo0.png", "photo1.png", "photo2.png"):
        a = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        b = json.loads((tmp_path / "ray" / f"{name}.json").read_text())
        assert a["names"] == b["names"] and a["cluster_grid"] == b["cluster_grid"]
        assert (tmp_path / "out" / f"{name}.labels.png").read_bytes() == (
            tmp_path / "ray" / f"{name}.labels.png"
        ).read_bytes()


def test_http_example_serves_and_rejects_bad_requests():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from selfseg_fast.serving import SelfSegService, ServiceConfig

    spec = importlib.util.spec_from_file_location("serve_http", ROOT / "examples" / "serve_http.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_http"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    cfg = SelfSegConfig.from_preset("voc").with_overrides({"weights": "random-tiny", "device": "cpu"})
    service = SelfSegService(cfg, ServiceConfig(max_batch=2, max_wait_ms=5))
    try:
        client = TestClient(module.create_app(service))
        buffer = io.BytesIO()
        Image.new("RGB", (80, 60), (20, 120, 200)).save(buffer, "JPEG")
        ok = client.post("/segment", content=buffer.getvalue())
        assert ok.status_code == 200
        body = ok.json()
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png_base64"]))))
        assert mask.shape == (60, 80) and isinstance(body["names"], list)
        assert client.post("/segment", content=b"").status_code == 400
        bad = client.post("/segment", content=b"definitely not an image")
        assert bad.status_code == 415 and bad.json()["detail"]
        assert client.post("/segment", content=buffer.getvalue()).status_code == 200  # still serving
    finally:
        service.close()
