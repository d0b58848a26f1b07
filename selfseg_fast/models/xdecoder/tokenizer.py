"""The CLIP BPE tokenizer X-Decoder's language encoder was trained with, loadable offline.

The official code uses `CLIPTokenizer.from_pretrained("openai/clip-vit-base-patch32")` (the slow tokenizer),
pads to `max_length` 77 with `<|endoftext|>` and truncates; the language encoder then pools at the first
`<|endoftext|>` (the largest id, so `argmax` finds it). Sources, in order:
  1. a local folder with `vocab.json` + `merges.txt`, or a hub id (the real loading path);
  2. for the default id, the CLIP BPE merges file that the `open_clip_torch` package ships
     (`bpe_simple_vocab_16e6.txt.gz`): the vocabulary is rebuilt from it exactly as CLIP defines it
     (256 byte symbols, the same with `</w>`, one entry per merge, then the two special tokens), so no
     network is needed. The package is only located on disk, never imported (it would import torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from transformers import CLIPTokenizer

from selfseg_fast.errors import WeightsError
from selfseg_fast.hub import hub_reachable

CLIP_TOKENIZER_ID = "openai/clip-vit-base-patch32"
CONTEXT_LENGTH = 77
N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: vocab = 512 byte symbols + merges + 2 specials
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


def byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) 256 byte symbols in vocabulary order: the 188 printable bytes stand for themselves
    (in byte order), then the other 68 bytes, in byte order, take the code points 256, 257, ...
    (transformers 4.x exported this table as `bytes_to_unicode`; 5.x no longer does.)"""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def bundled_bpe_path() -> Path | None:
    """The CLIP BPE merges file shipped by `open_clip_torch`, found without importing the package."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BPE_FILE
        if path.is_file():
            return path
    return None


def write_vocab_files(bpe_path: str | Path, folder: str | Path) -> None:
    """Write CLIP's `vocab.json` and `merges.txt` into `folder` from the gzipped merges file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as fh:
        lines = fh.read().strip().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")


def tokenizer_from_bpe(bpe_path: str | Path) -> CLIPTokenizer:
    """A `CLIPTokenizer` built from a CLIP BPE merges file (vocabulary rebuilt at runtime)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(bpe_path, tmp)
        tok = CLIPTokenizer.from_pretrained(tmp)  # the folder form loads the same on transformers 4.x and 5.x
    tok.model_max_length = CONTEXT_LENGTH
    return tok


@lru_cache(maxsize=4)
def load_clip_tokenizer(source: str | None = None) -> CLIPTokenizer:
    """The CLIP tokenizer from a local folder, a hub id, or (default) the offline bundled BPE file.

    Like the official `build_tokenizer`, `cls_token` is set to the end-of-text token (no new id).
    """
    source = source or CLIP_TOKENIZER_ID
    folder = Path(source)
    if folder.is_dir():
        if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
            raise WeightsError("tokenizer folder needs vocab.json and merges.txt", path=str(folder))
        tok = CLIPTokenizer.from_pretrained(str(folder))
    elif source == CLIP_TOKENIZER_ID and (bpe := bundled_bpe_path()) is not None:
        tok = tokenizer_from_bpe(bpe)
    else:
        error = WeightsError(
            f"cannot load the CLIP tokenizer {source!r} offline; install open_clip_torch "
            "(pip install --no-deps open_clip_torch: it ships the BPE file) or pass a folder "
            "with vocab.json and merges.txt"
        )
        try:  # offline: the HF cache only, at once (no minutes of retries)
            tok = CLIPTokenizer.from_pretrained(source, local_files_only=not hub_reachable())
        except (OSError, ValueError, TypeError) as exc:  # offline HF raises any of these
            raise error from exc
        if len(tok) < len(byte_symbols()):  # transformers 5.x returns an empty tokenizer instead
            raise error
    tok.add_special_tokens({"cls_token": tok.eos_token})
    return tok


def tokenize(
    tokenizer: CLIPTokenizer, texts: list[str], context_length: int = CONTEXT_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (input_ids [N, context_length] int64, attention_mask [N, context_length] int64).

    Official settings: pad to max_length with `<|endoftext|>`, truncate (keeping the end token).
    """
    out = tokenizer(
        list(texts), padding="max_length", truncation=True, max_length=context_length, return_tensors="pt"
    )
    return out["input_ids"], out["attention_mask"]
