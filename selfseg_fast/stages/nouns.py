"""Stage 4: captions -> nouns (spaCy POS tags, lemmatised to singular, kept if WordNet knows the noun).

Rules (paper Sect. 3.2; options reproduce the authors' released code, see README):
- tokens tagged NOUN (common nouns). Proper nouns (PROPN) are dropped: random-weight or sampled
  captions often capitalise common words, and X-Decoder needs category names, not names of people.
- the spaCy lemma, lower-cased (plurals -> singular); where spaCy leaves a plural unchanged, WordNet's
  `morphy` gives the base form.
- kept only if WordNet has the lemma as a noun; single tokens only (compounds are split by spaCy).
- de-duplicated, first-seen order.
- `min_length`, `block_list`, `drop_colour_words`: the released code's filters (off by default).

Reference: one `nlp(caption)` per caption. Fast: `nlp.pipe` over all captions of a batch, with a
per-caption cache and cached WordNet look-ups; with `workers` > 0, the captions not seen before are
split over that many spaCy worker processes (spawned once per process and configuration, each with
its own spaCy model and WordNet), so the GIL-bound tagging runs on other cores than the thread that
drives the GPU. Small batches (fewer than `min_parallel` new captions) stay in-process. All give
identical output (tested).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from functools import lru_cache

from selfseg_fast.config import NounConfig
from selfseg_fast.nlp_data import spacy_pipeline, wordnet

log = logging.getLogger(__name__)

COLOUR_WORDS = frozenset(
    [
        "red",
        "orange",
        "yellow",
        "green",
        "blue",
        "purple",
        "violet",
        "pink",
        "brown",
        "black",
        "white",
        "gray",
        "grey",
        "silver",
        "gold",
        "golden",
        "beige",
        "tan",
        "maroon",
        "navy",
        "teal",
        "turquoise",
        "cyan",
        "magenta",
        "lavender",
        "olive",
        "ivory",
        "cream",
        "crimson",
    ]
)


class NounExtractor:
    """Nouns from captions. `nouns_for_reference` is the plain path, `nouns_for_many` the batched one."""

    def __init__(
        self,
        cfg: NounConfig | None = None,
        *,
        cache_size: int = 65536,
        workers: int = 0,
        min_parallel: int = 64,
    ) -> None:
        self.cfg = cfg or NounConfig()
        self.workers, self.min_parallel = workers, min_parallel
        self.nlp = spacy_pipeline(self.cfg.spacy_model)
        self.wn = wordnet()
        self._blocked = {w.lower() for w in self.cfg.block_list} | (
            COLOUR_WORDS if self.cfg.drop_colour_words else set()
        )
        self._cache: dict[str, tuple[str, ...]] = {}
        self._cache_size = cache_size
        self._is_noun = lru_cache(maxsize=cache_size)(self._is_wordnet_noun)

    # ---- shared rules --------------------------------------------------------------------------------
    def _is_wordnet_noun(self, lemma: str) -> str | None:
        """The WordNet noun form of `lemma` (itself or its morphy base form), or None."""
        if self.wn.synsets(lemma, pos="n"):
            return lemma
        base = self.wn.morphy(lemma, "n")
        return base if base and self.wn.synsets(base, pos="n") else None

    def _nouns_of_doc(self, doc) -> tuple[str, ...]:
        found: list[str] = []
        for token in doc:
            if token.pos_ != "NOUN":
                continue
            lemma = token.lemma_.lower().strip()
            if not lemma.isalpha():
                continue
            noun = self._is_noun(lemma) if self.cfg.require_wordnet else lemma
            if noun is None or len(noun) < self.cfg.min_length or noun in self._blocked:
                continue
            if noun not in found:
                found.append(noun)
        return tuple(found)

    @staticmethod
    def _union(per_caption: Iterable[Iterable[str]]) -> list[str]:
        return list(dict.fromkeys(noun for nouns in per_caption for noun in nouns))

    # ---- reference -----------------------------------------------------------------------------------
    def extract(self, captions: list[str]) -> list[list[str]]:
        """Nouns per caption, one `nlp` call each (the reference path)."""
        return [list(self._nouns_of_doc(self.nlp(caption))) for caption in captions]

    def nouns_for_reference(self, captions: list[str]) -> list[str]:
        """Union of the nouns of `captions`, de-duplicated in first-seen order."""
        return self._union(self.extract(captions))

    # ---- fast ----------------------------------------------------------------------------------------
    def nouns_for_many(self, caption_lists: list[list[str]], *, batch_size: int = 256) -> list[list[str]]:
        """`nouns_for_reference` for many caption lists at once: unseen captions go through `nlp.pipe`
        (split over the worker processes when there are enough of them)."""
        unseen = list(dict.fromkeys(c for caps in caption_lists for c in caps if c not in self._cache))
        if unseen:
            if len(self._cache) + len(unseen) > self._cache_size:
                self._cache.clear()
            for caption, nouns in zip(unseen, self._nouns_of_captions(unseen, batch_size)):
                self._cache[caption] = nouns
        return [self._union(self._cache[c] for c in caps) for caps in caption_lists]

    def _nouns_of_captions(self, captions: list[str], batch_size: int) -> list[tuple[str, ...]]:
        if self.workers > 0 and len(captions) >= self.min_parallel:
            pool = _worker_pool(self.cfg, self.workers)
            step = -(-len(captions) // self.workers)
            chunks = [captions[i : i + step] for i in range(0, len(captions), step)]
            try:
                return [nouns for part in pool.map(_worker_nouns, chunks) for nouns in part]
            except BrokenProcessPool as exc:  # e.g. a __main__ that a spawned process cannot import
                log.warning("noun worker processes unavailable (%s); finding nouns in this process", exc)
                self.workers = 0
        return [self._nouns_of_doc(doc) for doc in self.nlp.pipe(captions, batch_size=batch_size)]

    def start_workers(self) -> None:
        """Start the worker processes now (they load spaCy while the models load and the first batch
        runs), instead of at the first large batch."""
        if self.workers > 0:
            pool = _worker_pool(self.cfg, self.workers)
            for _ in range(self.workers):
                pool.submit(_worker_nouns, [])


# ---- worker processes -----------------------------------------------------------------------------------
_POOLS: dict[tuple[str, int], ProcessPoolExecutor] = {}
_WORKER: NounExtractor | None = None


def _worker_pool(cfg: NounConfig, workers: int) -> ProcessPoolExecutor:
    """One pool per (configuration, size) and process, spawned (not forked: the parent runs torch)."""
    key = (repr(asdict(cfg)), workers)
    if key in _POOLS and getattr(_POOLS[key], "_broken", False):
        del _POOLS[key]
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(asdict(cfg),),
        )
    return _POOLS[key]


def _start_worker(cfg: dict) -> None:
    global _WORKER
    cfg["block_list"] = tuple(cfg["block_list"])
    _WORKER = NounExtractor(NounConfig(**(cfg | {"workers": 0})))


def _worker_nouns(captions: list[str]) -> list[tuple[str, ...]]:
    return [_WORKER._nouns_of_doc(doc) for doc in _WORKER.nlp.pipe(captions, batch_size=256)]


@atexit.register
def _stop_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False, cancel_futures=True)
