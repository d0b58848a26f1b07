"""What `pip install selfseg-fast` alone gives: `caption` runs without any optional package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfseg_fast import __version__
from selfseg_fast.errors import EXIT_SOME_FAILED, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]
# Installed here for the tests, extras or --no-deps installs, but not dependencies of the package.
NOT_DECLARED = (
    "crfseg", "triton", "cupy", "cuml", "ray", "fastapi", "uvicorn", "open_clip", "positional_encodings",
    "cityscapesscripts", "tensorrt", "pytest",
)  # fmt: skip
BLOCKER = """
import sys
for name in sys.argv[1].split(","):  # None in sys.modules: `import` fails, find_spec says "not installed"
    sys.modules[name] = None
sys.argv = ["selfseg-fast", *sys.argv[2:]]
from selfseg_fast.cli import main
sys.exit(main())
"""


def run_without_optional_packages(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "SELFSEG_PROGRESS": "1"}  # the bar, as on a terminal
    command = [sys.executable, "-c", BLOCKER, ",".join(NOT_DECLARED), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def test_caption_runs_without_any_undeclared_package(tmp_path) -> None:
    """The default engine needs nothing optional. One run also checks what a caption user sees: a line
    per good image on stdout, the bad one as one stderr line and exit 1, a progress bar showing model
    loading and the stages, and a JSON with provenance and the config."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    out_json = tmp_path / "caption.json"
    argv = ["caption", str(tmp_path / "a.png"), str(tmp_path / "bad.png"), "--weights", "random-tiny"]
    run = run_without_optional_packages([*argv, "--json", str(out_json)])
    assert run.returncode == EXIT_SOME_FAILED, run.stderr[-2000:]
    assert run.stdout.startswith(f"{tmp_path / 'a.png'}: ") and len(run.stdout.splitlines()) == 1
    errors = [line for line in run.stderr.replace("\r", "\n").splitlines() if "error" in line]
    assert len(errors) == 1 and "bad.png" in errors[0]
    bar = run.stderr.replace("\r", "\n")
    assert "caption:" in bar and "loading BLIP (random-tiny)" in bar
    assert all(stage in bar for stage in ("encode", "cluster", "caption", "nouns"))
    data = json.loads(out_json.read_text())
    assert data["provenance"]["selfseg_fast"] == __version__ and "libraries" in data["provenance"]
    assert data["provenance"]["schema_version"] >= 2 and data["config"]["weights"] == "random-tiny"
    assert [bool(image.get("error")) for image in data["images"]] == [True, False]  # the failure is kept

    reference = run_without_optional_packages(
        [*argv[:2], "--weights", "random-tiny", "--engine", "reference"]
    )
    assert reference.returncode == EXIT_USAGE  # one line naming the fix, before any model loads
    assert reference.stderr.strip().endswith("fix: pip install --no-deps crfseg==1.0.0")
    assert len(reference.stderr.strip().splitlines()) == 1


def test_dependencies_declare_what_the_core_imports() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in declared}
    assert {"torch", "transformers", "pydantic", "annotated-types", "tqdm", "spacy", "nltk"} <= names
    assert "crfseg" not in names  # pins torchvision: installed with --no-deps, see optional_deps.py
