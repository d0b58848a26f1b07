"""The GPU runbook's CPU dry run (benchmarks/gpu/runbook.py): bundles within the size limit, split files
joined and checked against the manifest, a missing bundle named, versions written, the GPU tests
collected, the end-to-end benchmark's tables written. No download: wheels come from a local folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runbook():
    spec = importlib.util.spec_from_file_location("runbook", ROOT / "benchmarks" / "gpu" / "runbook.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["runbook"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def wheel_cache(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    sizes = {
        "spacy-3.8.0-cp312-cp312-manylinux_2_17_x86_64.whl": 300_000,  # > 0.25 MiB: split in two parts
        "crfseg-1.0.0-py3-none-any.whl": 5_000,
        "numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl": 9_000,  # on the GPU image: left out
    }
    for i, (name, size) in enumerate(sizes.items()):
        (cache / name).write_bytes(bytes([i + 1]) * size)
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    (wordnet / "lexnames").write_text("00\tadj.all\t3\n")
    return cache, wordnet


def test_bundles_split_join_and_name_what_is_missing(runbook, wheel_cache, tmp_path):
    cache, wordnet = wheel_cache
    manifest = runbook.prepare(tmp_path / "w", cache, wordnet, bundle_mib=0.25)
    limit = 0.25 * 2**20
    assert all(b["bytes"] <= limit for b in manifest["bundles"]) and len(manifest["bundles"]) >= 2
    assert manifest["dropped_on_device"] == ["numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl"]
    spacy = next(f for f in manifest["files"] if f["name"].startswith("spacy"))
    assert spacy["parts"] == 2
    stage = tmp_path / "stage"
    first, *rest = manifest["bundles"]
    runbook.receive([tmp_path / "w" / first["name"]], stage)
    with pytest.raises(SystemExit, match=rest[0]["name"]):
        runbook.install(stage, dry_run=True)
    runbook.receive([tmp_path / "w" / b["name"] for b in rest], stage)
    runbook.install(stage, dry_run=True)
    assert (stage / spacy["name"]).read_bytes() == (cache / spacy["name"]).read_bytes()
    assert (stage / "nltk_data" / "corpora" / "wordnet" / "lexnames").is_file()
    (stage / spacy["name"]).write_bytes(b"corrupt")
    (stage / f"{spacy['name']}.part00").write_bytes(b"corrupt")
    with pytest.raises(SystemExit, match="SHA-256"):
        runbook.install(stage, dry_run=True)


def test_dry_run_runs_every_step_but_the_cuda_ones(runbook, wheel_cache, tmp_path, capsys):
    cache, wordnet = wheel_cache
    out = tmp_path / "out"
    argv = ["dry-run", "--out", str(out), "--stage", str(tmp_path / "stage"), "--wheel-cache", str(cache),
            "--wordnet", str(wordnet)]  # fmt: skip
    assert runbook.main(argv) == 0
    printed = capsys.readouterr().out
    assert "--no-index --find-links" in printed  # the offline install, printed not run
    versions = json.loads((out / "versions.json").read_text())
    assert versions["torch"] and versions["gpu"] is None and versions["nlp"]
    assert "test_" in (out / "pytest-gpu.log").read_text()  # the GPU tests were collected
    data = json.loads((out / "e2e-all" / "e2e.json").read_text())
    assert {(r["preset"], r["engine"]) for r in data["rows"]} == {
        (p, e) for p in ("voc", "cityscapes") for e in ("fast", "reference")
    }
    assert "| cityscapes | reference |" in (out / "e2e-all" / "e2e.md").read_text()
