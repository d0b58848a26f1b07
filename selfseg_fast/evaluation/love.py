"""LOVE, the LLM-based Open-Vocabulary Evaluator (Self-Seg, Sect. 3.4 and App. A, Algorithm 1).

Self-guided segmentation names regions with free nouns ("sedan", "puppy"); a benchmark scores fixed
classes. LOVE maps every predicted noun to one dataset class, or to `background`, and the predicted
masks are relabelled with that mapping before mIoU (Algorithm 1):

    noun is a name of the dataset (a class key or one of the dataset's own names) -> that class
    otherwise: prompt the LLM with the dataset's App. A template (batches of `llm_batch_size`),
               parse the answer, intersect with the vocabulary; nothing in common -> background

Names and priority (`Vocabulary`): a class's own name always wins over another class's other name.
Look-ups try, in order: the class keys, the first official name of each class, the dataset's other
official names (ADE20K-Full's "toilet, can, commode, ..., pot, potty, stool, throne"), and last our own
synonyms (VOC `tv`, Cityscapes `tree`). So `stool`, `pot`, `can` and `throne` are the ADE classes of
those names, never "toilet".

The synonym shortcut (a noun equal to one of *our* synonyms maps without asking the LLM) is not in the
paper: off by default (`synonym_shortcut=False`), an option for cheap offline runs.

Parsing (`parse_answer`): like the authors' parser (split the answer at quote marks, intersect the
pieces with the vocabulary), so apostrophes in chat-style answers do no harm ("I'm happy to help! The
term 'sedan' is most similar to 'car'." -> car). Of several class names in one answer the first wins,
except one named after a negation ("not 'bus'") or inside the class list echoed back ("[..., ...]");
the queried noun itself is skipped; an answer that is exactly a class name without quotes ("Car.") is
that class.

The mapping is cached on disk under a key made of everything that changes an answer: the back-end and
its model, the prompt templates, the decoding settings, and the vocabulary (class names, the dataset's
other names, our synonyms). A changed prompt never reuses old mappings.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from selfseg_fast.atomic_files import write_json_atomic
from selfseg_fast.paths import cache_path

BACKGROUND = "background"

# ---- App. A prompt templates ---------------------------------------------------------------------------
# "paper": App. A word for word. The typeset quotes (‘background’) are LaTeX's rendering of straight
# quotes, which the authors' released successor uses in the same sentences (ozzyou/AutoSeg
# LAVE/lave.py:48-63); <dataset> is the Python list of class names (as lave.py:29 renders it). The ADE20K
# sentence is printed without "is <noun>" ("To which class in the ADE20K dataset exclusively most
# similar to?"); it is kept as printed (the noun appears in the second sentence).
PAPER_TEMPLATES = {
    "list": (
        "To which class in the list {dataset} is {noun} exclusively most similar to? If {noun} is not "
        "similar to any class in the list or if the term describes stuff instead of things, answer with "
        "'background'. Reply in single quotation marks with the class name that is part of the list "
        "{dataset} and do not link it to any other class name which is not part of the given list or "
        "'background'."
    ),
    "ade20k": (
        "To which class in the ADE20K dataset exclusively most similar to? If {noun} is not similar to any "
        "class in ADE20K or if the term describes stuff instead of things, answer with 'background'. Reply "
        "in single quotation marks with the class name that is part of ADE20K and do not link it to any "
        "other class name which is not part of the given list or 'background'."
    ),
}
# "ours": our earlier wording (a named alternative, never the default).
OUR_TEMPLATES = {
    "list": (
        "The {dataset_title} dataset has these classes: {classes}. Which one of these classes does the "
        "object '{noun}' belong to? If it belongs to none of them, answer 'background'. Reply with the "
        "class name only, in single quotes."
    ),
    "ade20k": (
        "The ADE20K dataset of indoor and outdoor scenes has these classes: {classes}. Which one of these "
        "classes is '{noun}', or which is its closest match? If none of them fits, answer 'background'. "
        "Reply with the class name only, in single quotes."
    ),
}
TEMPLATES = {"paper": PAPER_TEMPLATES, "ours": OUR_TEMPLATES}
_TITLES = {"voc": "Pascal VOC", "cityscapes": "Cityscapes", "synthetic": "Cityscapes"}


@dataclass
class Vocabulary:
    """A dataset's classes as LOVE sees them (see the module docstring for the look-up order).

    names: one distinct key per class (train-id order); aliases: the dataset's other names per class
    (the first one is its first official name); synonyms: ours, per class."""

    dataset: str
    names: list[str]
    aliases: list[list[str]] = field(default_factory=list)
    synonyms: list[list[str]] = field(default_factory=list)

    @classmethod
    def from_dataset(cls, dataset) -> Vocabulary:
        return cls(
            dataset.name,
            list(dataset.class_names),
            [list(a) for a in getattr(dataset, "class_aliases", [])],
            [list(s) for s in getattr(dataset, "class_synonyms", [])],
        )

    def __post_init__(self) -> None:
        n = len(self.names)
        self.aliases = (list(self.aliases) + [[] for _ in range(n)])[:n]
        self.synonyms = (list(self.synonyms) + [[] for _ in range(n)])[:n]
        levels = [
            [(i, [name]) for i, name in enumerate(self.names)],
            [(i, a[:1]) for i, a in enumerate(self.aliases)],
            [(i, a[1:]) for i, a in enumerate(self.aliases)],
            [(i, s) for i, s in enumerate(self.synonyms)],
        ]
        self._own: dict[str, int] = {}  # keys and the dataset's own names
        self._any: dict[str, int] = {}  # ... and our synonyms
        for level, entries in enumerate(levels):
            for i, words in entries:
                for word in words:
                    key = normalise(word)
                    if level < 3:
                        self._own.setdefault(key, i)
                    self._any.setdefault(key, i)

    def index_of(self, word: str, *, synonyms: bool = True) -> int | None:
        """Train id of the class named `word` (case/space-insensitive), own names first; None if none."""
        table = self._any if synonyms else self._own
        return table.get(normalise(word))

    @property
    def background_index(self) -> int:
        """Train id of a `background` class (VOC), or -1 where the dataset has none (scored as a miss)."""
        found = self.index_of(BACKGROUND, synonyms=False)
        return -1 if found is None else found

    def classes(self) -> dict[str, list[str]]:
        """{class key: the dataset's other names + our synonyms} in train-id order (WordNet mapper)."""
        return {name: [*a, *s] for name, a, s in zip(self.names, self.aliases, self.synonyms)}

    def describe(self) -> dict:
        """Everything about the vocabulary that can change a mapping (part of the cache key)."""
        return {
            "dataset": self.dataset,
            "names": self.names,
            "aliases": self.aliases,
            "synonyms": self.synonyms,
        }


def normalise(word: str) -> str:
    return " ".join(word.lower().replace("_", " ").split())


# ---- Algorithm 1 pieces -------------------------------------------------------------------------------
def build_prompt(noun: str, vocabulary: Vocabulary, template: str = "paper") -> str:
    """The dataset's template (`TEMPLATES[template]`) filled with one noun and the class list."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown LOVE template {template!r}; choose one of: {', '.join(TEMPLATES)}")
    kind = "ade20k" if vocabulary.dataset == "ade20k" else "list"
    return TEMPLATES[template][kind].format(
        noun=noun,
        dataset=str(list(vocabulary.names)),  # the Python list, as the authors render it
        classes=", ".join(f"'{name}'" for name in vocabulary.names),
        dataset_title=_TITLES.get(vocabulary.dataset, vocabulary.dataset),
    )


_QUOTES = "'\"\u2018\u2019\u201c\u201d`"
_ECHOED_LIST = re.compile(r"\[[^\[\]]*,[^\[\]]*\]")  # "[..., ...]": the prompt's class list echoed
_NEGATION = re.compile(
    r"(?:\bnot|n['\u2019]t|\bnor|\bno|rather than|instead of|other than)\s*$", re.IGNORECASE
)


def parse_answer(text: str, vocabulary: Vocabulary, noun: str | None = None) -> str:
    """The class an LLM answer names (see the module docstring), else `background`."""
    text = _ECHOED_LIST.sub(" ", text)  # a class list the model repeats from the prompt names nothing
    quotes = [m.start() for m in re.finditer(f"[{_QUOTES}]", text)]
    for opening, closing in zip(quotes, quotes[1:]):  # every piece between two quote marks
        candidate = text[opening + 1 : closing].strip(" \t\n.,;:!?*()[]")
        if not candidate or len(candidate) > 120 or (noun and normalise(candidate) == normalise(noun)):
            continue
        index = vocabulary.index_of(candidate)
        if index is None or _NEGATION.search(text[max(0, opening - 24) : opening]):
            continue
        return vocabulary.names[index]
    bare = text.strip().strip(_QUOTES + " \t\n.,;:!?*")
    index = vocabulary.index_of(bare) if bare and len(bare) <= 120 else None
    return vocabulary.names[index] if index is not None else BACKGROUND


class LanguageModel(Protocol):
    """A text-in, text-out LLM: one answer per prompt, in order."""

    name: str

    def complete(self, prompts: list[str]) -> list[str]: ...

    def settings(self) -> dict: ...


class NounMapper(Protocol):
    """Anything that maps nouns (not names of the dataset) to class keys or `background`."""

    name: str
    is_llm: bool

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]: ...

    def describe(self) -> dict: ...


class LLMMapper:
    """Algorithm 1's LLM step: prompts in batches of `batch_size`, answers parsed (`parse_answer`)."""

    is_llm = True

    def __init__(self, llm: LanguageModel, batch_size: int = 16, template: str = "paper") -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown LOVE template {template!r}; choose one of: {', '.join(TEMPLATES)}")
        self.llm = llm
        self.name = llm.name
        self.batch_size = batch_size
        self.template = template
        self.last_answers: dict[str, str] = {}  # noun -> raw LLM answer (for audits; cached with the mapping)

    def describe(self) -> dict:
        return {
            "backend": self.llm.name,
            "llm": self.llm.settings(),
            "template": self.template,
            "template_text": TEMPLATES[self.template],
        }

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(nouns), self.batch_size):
            batch = nouns[start : start + self.batch_size]
            answers = self.llm.complete([build_prompt(noun, vocabulary, self.template) for noun in batch])
            for noun, answer in zip(batch, answers):
                self.last_answers[noun] = answer
                out[noun] = parse_answer(answer, vocabulary, noun)
        return out


class WordNetNounMapper:
    """Adapter: the offline WordNet mapper behind the `NounMapper` interface (a stand-in, not an LLM)."""

    name = "wordnet"
    is_llm = False
    RULES_VERSION = 1  # bump when wordnet_mapper's rules change (part of the cache key)

    def __init__(self) -> None:
        from selfseg_fast.evaluation.wordnet_mapper import WordNetMapper

        self._mapper = WordNetMapper()
        self.last_answers: dict[str, str] = {}

    def describe(self) -> dict:
        return {"backend": "wordnet", "rules_version": self.RULES_VERSION}

    def map_nouns(self, nouns: list[str], vocabulary: Vocabulary) -> dict[str, str]:
        return self._mapper.map_nouns(nouns, vocabulary.classes())


# ---- cache ---------------------------------------------------------------------------------------------
def default_cache_path() -> Path:
    """$SELFSEG_LOVE_CACHE, else love_cache.json under the cache root (paths.py)."""
    return cache_path("love_cache")


def cache_key(about: dict) -> str:
    """A short stable hash of everything that changes a mapping."""
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:20]


class LoveCache:
    """{"format": 2, "entries": {key: {"about": ..., "mapping": {noun: class}, "answers": {...}}}} in one
    JSON file, written atomically after each update. A file in another format is started afresh."""

    FORMAT = 2

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            data = {}  # a corrupt cache is rebuilt, never fatal
        ok = isinstance(data, dict) and data.get("format") == self.FORMAT
        self.entries: dict = data.get("entries", {}) if ok else {}

    def get(self, key: str, noun: str) -> str | None:
        return self.entries.get(key, {}).get("mapping", {}).get(noun)

    def answer(self, key: str, noun: str) -> str | None:
        return self.entries.get(key, {}).get("answers", {}).get(noun)

    def update(self, key: str, about: dict, mapping: dict[str, str], answers: dict[str, str]) -> None:
        if not mapping:
            return
        entry = self.entries.setdefault(key, {"about": about, "mapping": {}, "answers": {}})
        entry["mapping"].update(mapping)
        entry["answers"].update({n: a for n, a in answers.items() if n in mapping})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"format": self.FORMAT, "entries": self.entries}, sort_keys=True)


# ---- LOVE ----------------------------------------------------------------------------------------------
class LOVE:
    """Maps predicted nouns to a dataset's classes (cached) and relabels predicted masks with it."""

    def __init__(
        self,
        mapper: NounMapper,
        vocabulary: Vocabulary,
        cache: LoveCache | None = None,
        *,
        synonym_shortcut: bool = False,
    ) -> None:
        self.mapper = mapper
        self.vocabulary = vocabulary
        self.cache = cache
        self.synonym_shortcut = synonym_shortcut
        self.mapping: dict[str, str] = {}  # every noun mapped so far in this run
        self.answers: dict[str, str] = {}  # raw LLM answers of the nouns that went to the LLM
        self.about = {"mapper": mapper.describe(), "vocabulary": vocabulary.describe()}
        self.key = cache_key(self.about)

    @property
    def backend(self) -> str:
        return self.mapper.name

    @property
    def is_llm(self) -> bool:
        """True for the paper's LOVE (an LLM back-end), False for the WordNet stand-in."""
        return bool(getattr(self.mapper, "is_llm", False))

    def _direct(self, noun: str) -> str | None:
        """The class a noun names without asking the LLM: own names always, our synonyms with the shortcut."""
        index = self.vocabulary.index_of(noun, synonyms=self.synonym_shortcut)
        return None if index is None else self.vocabulary.names[index]

    def map(self, nouns: Sequence[str]) -> dict[str, str]:
        """noun -> class key or `background` for each distinct noun (Algorithm 1)."""
        todo: list[str] = []
        for noun in dict.fromkeys(nouns):
            if noun in self.mapping:
                continue
            direct = self._direct(noun)
            cached = self.cache.get(self.key, noun) if self.cache and direct is None else None
            if direct is not None:
                self.mapping[noun] = direct
            elif cached is not None:
                self.mapping[noun] = cached
                answer = self.cache.answer(self.key, noun)
                if answer is not None:
                    self.answers[noun] = answer
            else:
                todo.append(noun)
        step = max(1, int(getattr(self.mapper, "batch_size", 0) or len(todo) or 1))
        for start in range(0, len(todo), step):  # cached batch by batch: an outage keeps what was answered
            self._ask(todo[start : start + step])
        return {noun: self.mapping[noun] for noun in nouns}

    def _ask(self, todo: list[str]) -> None:
        found = self.mapper.map_nouns(todo, self.vocabulary)
        found = {noun: found.get(noun, BACKGROUND) for noun in todo}
        answers = {n: a for n, a in getattr(self.mapper, "last_answers", {}).items() if n in found}
        self.mapping.update(found)
        self.answers.update(answers)
        if self.cache is not None:
            self.cache.update(self.key, self.about, found, answers)

    def class_ids(self, nouns: Sequence[str]) -> np.ndarray:
        """[len(nouns)] int64 train id per noun (background: the dataset's background class or -1)."""
        mapping = self.map(nouns)
        ids = []
        for noun in nouns:
            index = self.vocabulary.index_of(mapping[noun], synonyms=False)
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
