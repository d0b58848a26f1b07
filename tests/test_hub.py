"""The one hub-reachability check every loader uses: environment switches and HF_ENDPOINT parsing."""

from __future__ import annotations

import socket

import pytest

from selfseg_fast import hub


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_offline_switches_skip_the_network(monkeypatch, name, value) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(name, value)

    def no_network(*args, **kwargs):
        raise AssertionError("no connection may be tried when the hub is switched off")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert hub.offline_by_env()
    assert not hub.hub_reachable()


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        (None, ("huggingface.co", 443)),
        ("https://hf-mirror.example.org", ("hf-mirror.example.org", 443)),
        ("http://10.0.0.5:8080/", ("10.0.0.5", 8080)),
        ("https://mirror.local:8443/path", ("mirror.local", 8443)),
    ],
)
def test_endpoint_address(monkeypatch, endpoint, address) -> None:
    if endpoint is None:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert hub.endpoint_address() == address


def test_reachable_follows_the_connection(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")  # nothing listens on port 1
    assert not hub.hub_reachable(timeout=0.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable(timeout=2.0)
    finally:
        server.close()


def test_unreachable_hub_tokenizer_fails_at_once(monkeypatch) -> None:
    """A hub id for X-Decoder's CLIP tokenizer, hub unreachable: one WeightsError, cache only."""
    from selfseg_fast.errors import WeightsError
    from selfseg_fast.models.xdecoder import tokenizer

    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(kwargs)
        raise OSError("not in cache")

    monkeypatch.setattr(tokenizer, "hub_reachable", lambda: False)
    monkeypatch.setattr(tokenizer.CLIPTokenizer, "from_pretrained", fake_from_pretrained)
    tokenizer.load_clip_tokenizer.cache_clear()
    with pytest.raises(WeightsError, match="offline"):
        tokenizer.load_clip_tokenizer("someone/clip-tokenizer")
    assert seen == {"local_files_only": True}
