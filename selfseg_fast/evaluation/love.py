"""LOVE, the LLM-based Open-Vocabulary Evaluator (Self-Seg, Sect. 3.4 and App. A, Algorithm 1).

Self-guided segmentation names regions with free nouns ("sedan", "puppy"); a benchmark scores fixed
classes. LOVE maps every predicted noun to one dataset class, or to `background`, and the predicted
masks are relabelled with that mapping before mIoU:

    for each batch of predicted nouns not yet mapped:
        noun already in the vocabulary (a class name or one of its synonyms) -> that class
        otherwise: prompt the LLM with the dataset's template, parse the class from single quotes,
                   intersect with the vocabulary; no class in the answer -> background

The prompt templates below are our own, written to the paper's description (one noun per prompt, the
dataset's class list, answer in single quotes, `background` when nothing fits): App. A's exact wording
was not available to us offline. The mapping is cached on disk per (noun, dataset, back-end), so a
score can be audited and re-computed without the LLM, and it is written into the results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.paths import cache_path

BACKGROUND = "background"

PROMPT_TEMPLATES = {
    "voc": (
        "The Pascal VOC dataset has these classes: {classes}. Which one of these classes does the object "
        "'{noun}' belong to? If it belongs to none of them, answer 'background'. Reply with the class name "
        "only, in single quotes."
    ),
    "cityscapes": (
        "The Cityscapes dataset of urban street scenes has these classes: {classes}. Which one of these "
        "classes does '{noun}' belong to? If it belongs to none of them, answer 'background'. Reply with the "
        "class name only, in single quotes."
    ),
    "ade20k": (
        "The ADE20K dataset of indoor and outdoor scenes has these classes: {classes}. Which one of these "
        "classes is '{noun}', or which is its closest match? If none of them fits, answer 'background'. "
        "Reply with the class name only, in single quotes."
    ),
}
PROMPT_TEMPLATES["synthetic"] = PROMPT_TEMPLATES["cityscapes"]  # synthetic data uses Cityscapes classes


@dataclass
class Vocabulary:
    """A dataset's classes as LOVE sees them: names (train-id order) and per-class synonyms."""

    dataset: str
    names: list[str]
    synonyms: list[list[str]]

    @classmethod
    def from_dataset(cls, dataset) -> Vocabulary:
        return cls(dataset.name, list(dataset.class_names), [list(s) for s in dataset.class_synonyms])

    def __post_init__(self) -> None:
        self._index: dict[str, int] = {}
        for i, (name, syns) in enumerate(zip(self.names, self.synonyms)):
            for word in (name, *syns):
                self._index.setdefault(normalise(word), i)  # duplicated names: the first class wins

    def index_of(self, word: str) -> int | None:
        """Train id of the class named `word` (name or synonym, case/space-insensitive), else None."""
        return self._index.get(normalise(word))

    @property
    def background_index(self) -> int:
        """Train id of a `background` class (VOC), or -1 where the dataset has none (scored as a miss)."""
        found = self.index_of(BACKGROUND)
        return -1 if found is None else found

    def classes(self) -> dict[str, list[str]]:
        """{class name: synonyms} in train-id order (first occurrence of duplicated names)."""
        out: dict[str, list[str]] = {}
        for name, syns in zip(self.names, self.synonyms):
            out.setdefault(name, list(syns))
        return out


def normalise(word: str) -> str:
    return " ".join(word.lower().replace("_", " ").split())


# ---- Algorithm 1 pieces -------------------------------------------------------------------------------
def build_prompt(noun: str, vocabulary: Vocabulary) -> str:
    """The dataset's template filled with its class list and one noun."""
    template = PROMPT_TEMPLATES.get(vocabulary.dataset, PROMPT_TEMPLATES["ade20k"])
    classes = ", ".join(f"'{name}'" for name in vocabulary.names)
    return template.format(classes=classes, noun=noun)


def parse_answer(text: str, vocabulary: Vocabulary) -> str:
    """The first single-quoted phrase of `text` that is in the vocabulary, else `background`."""
    for quoted in re.findall(r"'\s*([^'\n]+?)\s*'", text):
        index = vocabulary.index_of(quoted)
        if index is not None:
            return vocabulary.names[index]
    return BACKGROUND


class LanguageModel(Protocol):
    """A text-in, text-out LLM: one answer per prompt, in order."""

    name: str

    def complete(self, prompts: list[str]) -> list[str]: ...


class NounMapper(Protocol):
    """Anything that maps nouns (not in the vocabulary) to class names or `background`."""

    name: str

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]: ...


class LLMMapper:
    """Algorithm 1's LLM step: prompts in batches of `batch_size`, answers parsed from single quotes."""

    def __init__(self, llm: LanguageModel, batch_size: int = 16) -> None:
        self.llm = llm
        self.name = llm.name
        self.batch_size = batch_size
        self.last_answers: dict[str, str] = {}  # noun -> raw LLM answer of the latest call (for audits)

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(nouns), self.batch_size):
            batch = nouns[start : start + self.batch_size]
            answers = self.llm.complete([build_prompt(noun, vocabulary) for noun in batch])
            for noun, answer in zip(batch, answers):
                self.last_answers[noun] = answer
                out[noun] = parse_answer(answer, vocabulary)
        return out


class WordNetNounMapper:
    """Adapter: the offline WordNet mapper behind the `NounMapper` interface."""

    name = "wordnet"

    def __init__(self) -> None:
        from selfseg_fast.evaluation.wordnet_mapper import WordNetMapper

        self._mapper = WordNetMapper()

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]:
        return self._mapper.map_nouns(nouns, vocabulary.classes())


# ---- cache ---------------------------------------------------------------------------------------------
def default_cache_path() -> Path:
    """$SELFSEG_LOVE_CACHE, else love_cache.json under the cache root (paths.py)."""
    return cache_path("love_cache")


class LoveCache:
    """{backend: {dataset: {noun: class}}} in one JSON file, written atomically after each update."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            self.data: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.data = {}  # a corrupt cache is rebuilt, never fatal

    def get(self, backend: str, dataset: str, noun: str) -> str | None:
        return self.data.get(backend, {}).get(dataset, {}).get(noun)

    def update(self, backend: str, dataset: str, mapping: dict[str, str]) -> None:
        if not mapping:
            return
        self.data.setdefault(backend, {}).setdefault(dataset, {}).update(mapping)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data, sort_keys=True)


# ---- LOVE ----------------------------------------------------------------------------------------------
class LOVE:
    """Maps predicted nouns to a dataset's classes (cached) and relabels predicted masks with it."""

    def __init__(self, mapper: NounMapper, vocabulary: Vocabulary, cache: LoveCache | None = None) -> None:
        self.mapper = mapper
        self.vocabulary = vocabulary
        self.cache = cache
        self.mapping: dict[str, str] = {}  # every noun mapped so far in this run

    @property
    def backend(self) -> str:
        return self.mapper.name

    def map(self, nouns: Sequence[str]) -> dict[str, str]:
        """noun -> class name or `background` for each distinct noun (Algorithm 1)."""
        todo: list[str] = []
        for noun in dict.fromkeys(nouns):
            if noun in self.mapping:
                continue
            index = self.vocabulary.index_of(noun)
            if index is not None:
                self.mapping[noun] = self.vocabulary.names[index]
                continue
            cached = self.cache.get(self.backend, self.vocabulary.dataset, noun) if self.cache else None
            if cached is not None:
                self.mapping[noun] = cached
            else:
                todo.append(noun)
        if todo:
            found = self.mapper.map_nouns(todo, self.vocabulary)
            found = {noun: found.get(noun, BACKGROUND) for noun in todo}
            self.mapping.update(found)
            if self.cache is not None:
                self.cache.update(self.backend, self.vocabulary.dataset, found)
        return {noun: self.mapping[noun] for noun in nouns}

    def class_ids(self, nouns: Sequence[str]) -> np.ndarray:
        """[len(nouns)] int64 train id per noun (background: the dataset's background class or -1)."""
        mapping = self.map(nouns)
        ids = []
        for noun in nouns:
            index = self.vocabulary.index_of(mapping[noun])
            ids.append(self.vocabulary.background_index if index is None else index)
        return np.asarray(ids, dtype=np.int64)

    def apply(self, prediction: np.ndarray, nouns: Sequence[str]) -> np.ndarray:
        """[H, W] indices into `nouns` (-1: unlabelled) -> [H, W] int64 train ids (-1: no class)."""
        return apply_mapping(prediction, self.class_ids(nouns))


def apply_mapping(prediction: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Relabel [H, W] noun indices with `class_ids` ([N] train ids); indices outside 0..N-1 -> -1."""
    prediction = np.asarray(prediction, dtype=np.int64)
    lut = np.concatenate([np.asarray(class_ids, dtype=np.int64), [-1]])
    safe = np.where((prediction >= 0) & (prediction < len(class_ids)), prediction, len(class_ids))
    return lut[safe]
