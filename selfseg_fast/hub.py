"""Whether the Hugging Face hub is worth asking, decided once for every loader (BLIP, X-Decoder, its
CLIP tokenizer, the LOVE LLM): offline, HF's libraries retry for tens of seconds before failing, so we
check the environment (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE) and one quick TCP connection to the
endpoint (HF_ENDPOINT, mirrors included) first and give the user a one-line error at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

_TRUE = ("1", "true", "yes", "on")


def offline_by_env() -> bool:
    """True when the user switched the hub off (huggingface_hub's and transformers' own variables)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "0").strip().lower() in _TRUE for name in names)


def endpoint_address() -> tuple[str, int]:
    """(host, port) of HF_ENDPOINT (default https://huggingface.co)."""
    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co").strip())
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def hub_reachable(timeout: float = 3.0) -> bool:
    """Not switched off and the endpoint accepts a TCP connection within `timeout` seconds."""
    if offline_by_env():
        return False
    try:
        socket.create_connection(endpoint_address(), timeout=timeout).close()
        return True
    except OSError:
        return False


def looks_like_path(source: str) -> bool:
    """A local path rather than a hub id: starts like one, or exists."""
    return source.startswith(("/", "./", "../", "~")) or Path(source).expanduser().exists()
