"""Your own label set at inference time: free nouns mapped onto a fixed taxonomy, per image.

Self-Seg names regions with free nouns; a service wants stable label ids, a researcher wants LOVE per
image without an offline step. `Taxonomy` maps every noun onto one label of a given set with the same
LOVE mappers `bench` uses (offline WordNet, HF LLM, OpenAI-compatible server; cached on disk under the
same key rules), or onto `other` when the mapper answers "background":

    taxonomy "cityscapes" | "ade20k" | "voc" | FILE.json
    nouns [K] --LOVE--> label id per noun [K] in 0..T (T = `other`)
    scores [K, H, W] --sum per label--> [T+1, H, W] --argmax--> label map (stable ids 0..T)

Summing is exact (X-Decoder's semantic map is linear in the class probabilities: the summed map is
the map of the merged class). `merge="relabel"` instead relabels the argmax of the free-noun map with
the mapping table, which is exactly what `bench` scores; the two agree wherever one noun holds more
than half of a pixel's score.

A taxonomy file is JSON: a list of label names, or
`{"name": "my-labels", "labels": ["car", "person", ...], "aliases": {"person": ["pedestrian"]}}`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from selfseg_fast.errors import SelfSegError
from selfseg_fast.evaluation.love import BACKGROUND, LOVE, LoveCache, NounMapper, Vocabulary

OTHER = "other"
BUILTIN = ("cityscapes", "ade20k", "voc")


def builtin_vocabulary(name: str) -> Vocabulary:
    """A dataset's classes as a taxonomy (VOC without its `background`: that is `other` here)."""
    if name == "cityscapes":
        from selfseg_fast.evaluation.datasets.cityscapes import CITYSCAPES_CLASSES

        return Vocabulary("cityscapes", list(CITYSCAPES_CLASSES))
    if name == "voc":
        from selfseg_fast.evaluation.datasets.voc import VOC_CLASSES, VOC_DEVKIT_NAMES

        names = [n for n in VOC_CLASSES if n != BACKGROUND]
        return Vocabulary("voc", names, [VOC_DEVKIT_NAMES.get(n, []) for n in names])
    if name == "ade20k":
        from selfseg_fast.evaluation.datasets.ade20k import class_keys, packaged_class_names

        keys, aliases = class_keys(packaged_class_names())
        return Vocabulary("ade20k", keys, aliases)
    raise SelfSegError(f"unknown taxonomy {name!r}; use one of {', '.join(BUILTIN)} or a JSON file")


def load_vocabulary(spec: str) -> Vocabulary:
    """`spec`: a built-in name or a JSON file (see the module docstring); one-line errors."""
    if spec in BUILTIN:
        return builtin_vocabulary(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SelfSegError(f"--taxonomy {spec!r}: not a built-in ({', '.join(BUILTIN)}) and no such file")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SelfSegError(f"cannot read the taxonomy ({exc}); fix the JSON", path=str(path)) from exc
    if isinstance(data, list):
        data = {"labels": data}
    labels = data.get("labels") if isinstance(data, dict) else None
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(x, str) and x.strip() for x in labels)
    ):
        raise SelfSegError('a taxonomy is a list of label names or {"labels": [...]}', path=str(path))
    labels = [x.strip() for x in labels]
    aliases_in = data.get("aliases", {})
    if not isinstance(aliases_in, dict) or any(
        not isinstance(v, list) or not all(isinstance(a, str) for a in v) for v in aliases_in.values()
    ):
        raise SelfSegError('"aliases" must map a label to a list of names', path=str(path))
    if unknown := sorted(set(aliases_in) - set(labels)):
        raise SelfSegError(f'"aliases" names labels that are not in "labels": {unknown[:3]}', path=str(path))
    if len(set(labels)) != len(labels) or OTHER in labels:
        raise SelfSegError(f'labels must be distinct and must not include "{OTHER}"', path=str(path))
    name = str(data.get("name") or path.stem)
    return Vocabulary(name, labels, [list(aliases_in.get(label, [])) for label in labels])


@dataclass
class TaxonomyResult:
    """One image's segmentation over the taxonomy."""

    label_map: np.ndarray  # [H, W] int64 label ids 0..T (T = other), -1 where no name was given
    labels: list[str]  # the taxonomy's labels + `other`, id order (stable across images)
    mapping: dict[str, str]  # noun -> label (or `other`)

    def present(self) -> list[str]:
        ids = np.unique(self.label_map[self.label_map >= 0])
        return [self.labels[i] for i in ids]


class Taxonomy:
    """Maps free nouns onto a fixed label set (LOVE, cached) and merges score maps per label."""

    def __init__(
        self,
        vocabulary: Vocabulary,
        mapper: NounMapper,
        cache: LoveCache | None = None,
        *,
        synonym_shortcut: bool = False,
        merge: Literal["sum", "relabel"] = "sum",
    ) -> None:
        if merge not in ("sum", "relabel"):
            raise SelfSegError(f"taxonomy merge {merge!r}: use 'sum' or 'relabel'")
        self.vocabulary = vocabulary
        self.love = LOVE(mapper, vocabulary, cache, synonym_shortcut=synonym_shortcut)
        self.merge = merge
        self.labels = [*vocabulary.names, OTHER]

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        llm: str | None = None,
        llm_url: str | None = None,
        cache: str | Path | None = None,
        **kwargs: Any,
    ) -> Taxonomy:
        """`spec` as `--taxonomy` takes it; the mapper as `bench --llm/--llm-url` builds it."""
        from selfseg_fast.evaluation.llm import build_mapper

        return cls(load_vocabulary(spec), build_mapper(llm, llm_url), LoveCache(cache), **kwargs)

    @property
    def other_id(self) -> int:
        return len(self.labels) - 1

    def label_ids(self, nouns: Sequence[str]) -> list[int]:
        """[K] label id per noun (`other` for what the mapper sends to background)."""
        mapping = self.love.map(list(nouns))
        ids = []
        for noun in nouns:
            index = self.vocabulary.index_of(mapping[noun], synonyms=False)
            ids.append(self.other_id if index is None else index)
        return ids

    def mapping(self, nouns: Sequence[str]) -> dict[str, str]:
        return {noun: self.labels[i] for noun, i in zip(nouns, self.label_ids(nouns))}

    def merge_scores(self, scores: torch.Tensor, nouns: Sequence[str]) -> torch.Tensor:
        """[K, H, W] per-noun scores -> [T+1, H, W] per-label scores (summed)."""
        target = torch.tensor(self.label_ids(nouns), device=scores.device, dtype=torch.long)
        out = scores.new_zeros((len(self.labels), *scores.shape[1:]))
        return out.index_add_(0, target, scores)

    def relabel(self, label_map: np.ndarray, nouns: Sequence[str]) -> np.ndarray:
        """[H, W] indices into `nouns` (-1 unlabelled) -> [H, W] label ids (-1 stays -1)."""
        lut = np.asarray([*self.label_ids(nouns), -1], dtype=np.int64)
        label_map = np.asarray(label_map, dtype=np.int64)
        return lut[np.where((label_map >= 0) & (label_map < len(nouns)), label_map, len(nouns))]

    def apply(
        self, nouns: Sequence[str], *, scores: torch.Tensor | None = None, label_map: np.ndarray | None = None
    ) -> TaxonomyResult:
        """One image: from its per-noun score maps (merge "sum") or its label map (merge "relabel")."""
        if not len(nouns):  # nothing was named: every pixel stays unlabelled
            shape = tuple(scores.shape[1:]) if scores is not None else np.shape(label_map)
            return TaxonomyResult(np.full(shape, -1, dtype=np.int64), list(self.labels), {})
        if self.merge == "sum" and scores is not None:
            merged = self.merge_scores(scores, nouns)
            out = merged.argmax(0).cpu().numpy().astype(np.int64)
        elif label_map is not None:
            out = self.relabel(label_map, nouns)
        else:
            raise ValueError("Taxonomy.apply needs scores (merge='sum') or a label map")
        return TaxonomyResult(out, list(self.labels), self.mapping(nouns))
