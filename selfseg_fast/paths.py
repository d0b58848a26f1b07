"""Where selfseg-fast keeps what it builds or caches: one root, one place that decides it.

    $SELFSEG_CACHE                       if set
    $XDG_CACHE_HOME/selfseg-fast         else, if XDG_CACHE_HOME is set
    ~/.cache/selfseg-fast                else

Everything of ours lives under it (NLTK WordNet folder, the synthetic BLIP vocabulary, the LOVE
mapping cache, synthetic datasets); a per-item variable overrides one item. Model weights are not
ours: they stay in the Hugging Face cache (`HF_HOME`), where every HF tool finds them.
"""

from __future__ import annotations

import os
from pathlib import Path

# name -> (environment variable that overrides it, path under the cache root)
ITEMS: dict[str, tuple[str, str]] = {
    "nltk_data": ("SELFSEG_NLTK_DATA", "nltk_data"),
    "blip_vocab": ("SELFSEG_VOCAB_DIR", "blip-synthetic-vocab"),
    "love_cache": ("SELFSEG_LOVE_CACHE", "love_cache.json"),
    "synthetic_dataset": ("SELFSEG_SYNTHETIC_ROOT", "synthetic-cityscapes"),
}


def cache_root() -> Path:
    """The root of everything selfseg-fast caches (see the module docstring)."""
    if env := os.environ.get("SELFSEG_CACHE"):
        return Path(env).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "selfseg-fast"
    return Path.home() / ".cache" / "selfseg-fast"


def cache_path(item: str) -> Path:
    """The path of one cached item: its own variable if set, else its place under `cache_root()`."""
    variable, relative = ITEMS[item]
    if env := os.environ.get(variable):
        return Path(env).expanduser()
    return cache_root() / relative
