"""Where X-Decoder weights come from: huggingface_hub for released names / hf:// / hub URLs (HF cache,
offline mode, revisions), https only for other URLs (cached by URL, never by file name), SHA-256 of the
released files verified once, local files as before."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import huggingface_hub
import pytest
import torch

import selfseg_fast.models.xdecoder.checkpoint_files as files
from selfseg_fast.errors import WeightsError
from selfseg_fast.models.xdecoder.checkpoint import read_checkpoint, resolve_source
from selfseg_fast.models.xdecoder.checkpoint_files import (
    HUB_REPO,
    KNOWN_CHECKPOINTS,
    HubFile,
    KnownCheckpoint,
    fetch_checkpoint,
    parse_source,
    url_cache_path,
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSEG_CACHE", str(tmp_path / "selfseg-cache"))
    monkeypatch.delenv("SELFSEG_ALLOW_HTTP", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def _state_file(path: Path, value: float = 1.0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.full((2,), value)}}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pin(monkeypatch, name: str, sha: str | None) -> None:
    known = KNOWN_CHECKPOINTS[name]
    monkeypatch.setitem(KNOWN_CHECKPOINTS, name, KnownCheckpoint(known.filename, sha, known.config))


def test_sources_parse_to_hub_files_urls_or_paths(tmp_path):
    assert parse_source("xdecoder_focalt_last") == HubFile(HUB_REPO, "xdecoder_focalt_last.pt")
    assert parse_source("xdecoder_focall_last.pt@v1.0") == HubFile(
        HUB_REPO, "xdecoder_focall_last.pt", "v1.0"
    )
    assert parse_source("xdecoder_focalt_best_openseg", "abc123").revision == "abc123"
    assert parse_source("hf://me/my-xdecoder/ckpt/model.pt@main") == HubFile(
        "me/my-xdecoder", "ckpt/model.pt", "main"
    )
    url = "https://huggingface.co/xdecoder/X-Decoder/resolve/0147c19/xdecoder_focalt_last.pt"
    assert parse_source(url) == HubFile(HUB_REPO, "xdecoder_focalt_last.pt", "0147c19")
    assert parse_source("https://example.org/x.pt") == "https://example.org/x.pt"
    local = tmp_path / "we@ird.pt"
    _state_file(local)
    assert parse_source(str(local)) == local  # an existing file wins, "@" and all
    assert resolve_source("xdecoder_focalt_last.pt").startswith("https://huggingface.co/xdecoder/X-Decoder/")
    assert all(k.sha256 and len(k.sha256) == 64 for k in KNOWN_CHECKPOINTS.values())


def test_plain_http_is_refused_unless_explicitly_allowed(monkeypatch, tmp_path):
    with pytest.raises(WeightsError, match="plain http") as info:
        fetch_checkpoint("http://example.org/xdecoder_focalt_last.pt")
    assert "\n" not in str(info.value)
    monkeypatch.setenv("SELFSEG_ALLOW_HTTP", "1")
    assert parse_source("http://example.org/x.pt") == "http://example.org/x.pt"


def test_released_names_go_through_hf_hub_download_and_are_verified(monkeypatch, tmp_path):
    blob = tmp_path / "hub" / "xdecoder_focalt_last.pt"
    sha = _state_file(blob)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename, kwargs.get("revision")))
        return str(blob)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    _pin(monkeypatch, "xdecoder_focalt_last", "0" * 64)
    with pytest.raises(WeightsError, match="not the released file") as info:
        read_checkpoint("xdecoder_focalt_last")
    assert sha in str(info.value) and "\n" not in str(info.value)
    _pin(monkeypatch, "xdecoder_focalt_last", sha)
    hashed = []
    monkeypatch.setattr(files, "sha256_of", lambda p: hashed.append(p) or sha)
    for _ in range(3):
        assert torch.equal(read_checkpoint("xdecoder_focalt_last", revision="v2")["w"], torch.ones(2))
    assert len(hashed) == 1  # verified once, remembered by path, size and mtime
    assert calls[-1] == (HUB_REPO, "xdecoder_focalt_last.pt", "v2")


def test_offline_mode_reads_the_hugging_face_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    commit = "a" * 40
    repo = cache / "models--xdecoder--X-Decoder"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    sha = _state_file(repo / "snapshots" / commit / "xdecoder_focalt_last.pt", 3.0)
    _pin(monkeypatch, "xdecoder_focalt_last", sha)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = read_checkpoint("xdecoder_focalt_last", cache_dir=cache)  # the real hf_hub_download, no network
    assert torch.equal(state["w"], torch.full((2,), 3.0))
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE") as info:
        read_checkpoint("xdecoder_focall_last", cache_dir=cache)
    assert "\n" not in str(info.value) and "xdecoder/X-Decoder/xdecoder_focall_last.pt" in str(info.value)


def test_https_downloads_are_cached_by_url_not_by_file_name(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    served = {
        "https://a.example/xdecoder_focalt_last.pt": 1.0,
        "https://b.example/xdecoder_focalt_last.pt": 2.0,
    }

    def fake_download(url, dst, progress=True):
        _state_file(Path(dst), served[url])

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    paths = {url: fetch_checkpoint(url) for url in served}
    assert len(set(paths.values())) == 2 and all(p == url_cache_path(u) for u, p in paths.items())
    assert torch.equal(
        read_checkpoint("https://b.example/xdecoder_focalt_last.pt")["w"], torch.full((2,), 2.0)
    )
    # the released name still resolves to the hub, never to a file downloaded from elsewhere
    assert isinstance(parse_source("xdecoder_focalt_last.pt"), HubFile)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded twice"))
    fetch_checkpoint("https://a.example/xdecoder_focalt_last.pt")


def test_a_local_file_still_loads_and_a_renamed_one_only_warns(tmp_path, caplog):
    own = tmp_path / "mine.pt"
    _state_file(own, 5.0)
    assert torch.equal(read_checkpoint(own)["w"], torch.full((2,), 5.0))
    look_alike = tmp_path / "xdecoder_focalt_last.pt"
    _state_file(look_alike, 6.0)
    with caplog.at_level(logging.WARNING, logger="selfseg_fast"):
        assert torch.equal(read_checkpoint(look_alike)["w"], torch.full((2,), 6.0))
    assert any("not the released file" in r.getMessage() for r in caplog.records)


def test_revision_flag_pins_the_hub_checkpoint():
    import argparse

    from selfseg_fast.commands.options import add_config_options, add_segmenter_options, config_from_args

    parser = argparse.ArgumentParser()
    add_segmenter_options(parser)
    add_config_options(parser)
    cfg = config_from_args(parser.parse_args(["--revision", "0147c19"]))
    assert cfg.segmenter.checkpoint == "xdecoder_focalt_last@0147c19"
    cfg = config_from_args(
        parser.parse_args(["--checkpoint", "xdecoder_focalt_best_openseg@x", "--revision", "y"])
    )
    assert cfg.segmenter.checkpoint == "xdecoder_focalt_best_openseg@y"
