"""Class names -> X-Decoder text embeddings, cached per name so a per-image vocabulary is cheap.

Official evaluation (`get_text_embeddings(..., is_eval=True)`): for each class, fill the 81 prompt templates,
encode each prompt (end-token embedding @ lang_proj, L2-normalized with +1e-7), average over templates, and
L2-normalize the mean. Two implementations:
  - `embed_reference`: that loop, one encoder pass per class name;
  - `TextEmbedder` (fast): one batched pass over every template of every not-yet-cached name, and a cache
    keyed by the class name, so a name already seen costs no encoder pass at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
from transformers import CLIPTokenizer

from selfseg_fast.errors import SelfSegError
from selfseg_fast.models.xdecoder.language import LanguageEncoder
from selfseg_fast.models.xdecoder.prompts import PROMPT_TEMPLATES, prompt_texts
from selfseg_fast.models.xdecoder.tokenizer import load_clip_tokenizer, tokenize


def _check_names(class_names: Sequence[str]) -> list[str]:
    if isinstance(class_names, str):
        raise SelfSegError("class_names: pass a list of names, not one string (e.g. ['car', 'road'])")
    names = list(class_names)
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise SelfSegError(f"class_names: every class name must be a non-empty string, got {name!r}")
    return names


def _device(encoder: LanguageEncoder) -> torch.device:
    return encoder.lang_proj.device


@torch.no_grad()
def embed_reference(
    encoder: LanguageEncoder,
    tokenizer: CLIPTokenizer,
    class_names: Sequence[str],
    templates: tuple[str, ...] = PROMPT_TEMPLATES,
) -> torch.Tensor:
    """The official per-class loop: class_names (C) -> normalized embeddings [C, proj_dim] float32."""
    out = []
    for name in _check_names(class_names):
        ids, mask = tokenize(tokenizer, prompt_texts(name, templates), encoder.cfg.context_length)
        emb = encoder.forward_language(ids.to(_device(encoder)), mask.to(_device(encoder)), norm=True)
        mean = emb.float().mean(dim=0)
        out.append(mean / mean.norm())
    if not out:
        return torch.zeros(0, encoder.cfg.proj_dim, device=_device(encoder))
    return torch.stack(out)


class TextEmbedder:
    """Batched, cached class-name embedder: `embedder(["car", "road"]) -> [2, proj_dim]` float32.

    The cache holds one normalized vector per class name (at most `max_cached`, least recently used
    dropped first). Call `clear()` after changing the encoder's weights. `encoder_passes` counts encoder
    forward calls (tests and profiling read it). Calls are serialized by a lock (serving threads share one).
    """

    def __init__(
        self,
        encoder: LanguageEncoder,
        tokenizer: CLIPTokenizer | None = None,
        *,
        templates: tuple[str, ...] = PROMPT_TEMPLATES,
        batch_size: int = 1024,
        max_cached: int = 100_000,
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer if tokenizer is not None else load_clip_tokenizer(encoder.cfg.tokenizer)
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self.max_cached = max_cached
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_passes = 0

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, name: str) -> bool:
        return name in self._cache

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __call__(self, class_names: Sequence[str]) -> torch.Tensor:
        """class_names (C) -> normalized embeddings [C, proj_dim] float32 on the encoder's device."""
        names = _check_names(class_names)
        with self._lock:
            return self._lookup(names)

    def _lookup(self, names: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(n for n in names if n not in self._cache))
        if missing:
            for name, emb in zip(missing, self._encode(missing)):
                self._cache[name] = emb
        for name in names:
            self._cache.move_to_end(name)
        result = [self._cache[n] for n in names]
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        device = _device(self.encoder)
        if not result:
            return torch.zeros(0, self.encoder.cfg.proj_dim, device=device)
        return torch.stack(result).to(device)  # the encoder may have moved since an entry was cached

    @torch.no_grad()
    def _encode(self, names: list[str]) -> torch.Tensor:
        """names (N) -> [N, proj_dim]: every template of every name, in batches of `batch_size` prompts."""
        t = len(self.templates)
        texts = [p for name in names for p in prompt_texts(name, self.templates)]
        ids, mask = tokenize(self.tokenizer, texts, self.encoder.cfg.context_length)
        device = _device(self.encoder)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            sl = slice(start, start + self.batch_size)
            emb = self.encoder.forward_language(ids[sl].to(device), mask[sl].to(device), norm=True)
            self.encoder_passes += 1
            chunks.append(emb.float())
        mean = torch.cat(chunks).view(len(names), t, -1).mean(dim=1)
        return mean / mean.norm(dim=-1, keepdim=True)
