"""Every ```python block of README.md runs as written (offline: random-tiny weights, a generated photo)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfseg_fast.pipeline import SelfSegPipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_python_blocks() -> None:
    assert python_blocks(README.read_text()), "README.md lost its Python example"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_block_runs(index, tmp_path, monkeypatch) -> None:
    block = python_blocks(README.read_text())[index]
    rng = np.random.default_rng(0)
    photo = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 10, 0), 10, 1)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    monkeypatch.chdir(tmp_path)
    original = SelfSegPipeline.from_pretrained.__func__

    def offline(cls, *args, **kwargs):  # pretrained weights cannot be downloaded here
        kwargs.setdefault("weights", "random-tiny")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SelfSegPipeline, "from_pretrained", classmethod(offline))
    exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})


def test_every_selfseg_environment_variable_is_in_the_readme_table() -> None:
    root = README.parent
    used = set()
    for folder in ("selfseg_fast", "kernels", "export", "examples", "benchmarks"):
        for path in (root / folder).rglob("*.py"):
            used.update(re.findall(r"\bSELFSEG_[A-Z_]+\b", path.read_text()))
    table = README.read_text().split("### Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(SELFSEG_[A-Z_]+)`", table))
    assert used and used <= documented, f"not in the README's table: {sorted(used - documented)}"


def test_exit_code_table_matches_the_constants() -> None:
    from selfseg_fast import errors

    table = README.read_text().split("### Exit codes", 1)[1].split("\n### ", 1)[0]
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)]
    assert codes[:4] == [errors.EXIT_OK, errors.EXIT_SOME_FAILED, errors.EXIT_USAGE, errors.EXIT_INTERNAL]
