"""A grouping of class names into output labels, applied to class probabilities or score maps.

X-Decoder's semantic scores are linear in the class probabilities (scores[k] = sum_q probs[q, k] *
sigmoid(mask_q)), so summing the probability columns of the names of one group gives exactly the sum
of their score maps, i.e. the score map of the merged class. Consolidation (merged nouns) and a
taxonomy (nouns mapped onto fixed labels) are both such groupings, composed one after the other:

    names [K] --target--> labels [K']          probs [Q, K] -> [Q, K'],  scores [K, ...] -> [K', ...]

With a taxonomy, `ids` gives each of the K' columns the stable id of its label in the whole label set
(`id_names`), and a label map over the K' columns becomes one over the stable ids (`stable`). Merged
by summing, the columns are the labels present in the image; merged by relabelling (`relabelled_by`),
they stay the names, and only the argmax is relabelled (what `bench` scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from selfseg_fast.consolidate import Merge, resolve_merges


@dataclass(frozen=True)
class Grouping:
    """names[i] goes to labels[target[i]]; `merges` and `mapping` say why (the JSON audit)."""

    names: tuple[str, ...]  # [K] the names given to the segmenter
    target: tuple[int, ...]  # [K] output column of each name
    labels: tuple[str, ...]  # [K'] output columns
    merges: tuple[Merge, ...] = ()
    mapping: dict[str, str] | None = None  # taxonomy: name -> label (None: no taxonomy)
    ids: tuple[int, ...] | None = None  # taxonomy: [K'] stable id of each output column's label
    id_names: tuple[str, ...] | None = None  # taxonomy: every label in id order (`other` last)
    taxonomy: str | None = None  # taxonomy: its name

    @classmethod
    def identity(cls, names: list[str] | tuple[str, ...]) -> Grouping:
        return cls(tuple(names), tuple(range(len(names))), tuple(names))

    @classmethod
    def from_merges(cls, names: list[str] | tuple[str, ...], merges: list[Merge]) -> Grouping:
        """Each name to the name finally kept (merges chain), kept names in first-seen order."""
        kept_of = resolve_merges(list(names), merges)
        labels = [n for n in names if kept_of[n] == n]
        index = {n: i for i, n in enumerate(labels)}
        return cls(tuple(names), tuple(index[kept_of[n]] for n in names), tuple(labels), tuple(merges))

    @property
    def is_identity(self) -> bool:
        return self.ids is None and self.target == tuple(range(len(self.names)))

    def then(self, other: Grouping) -> Grouping:
        """This grouping followed by `other` (whose names are this one's labels)."""
        if tuple(other.names) != self.labels:
            raise ValueError("Grouping.then: the second grouping's names must be the first one's labels")
        mapping = None
        if other.mapping is not None:  # every original name gets the label of the name it was merged into
            mapping = {n: other.mapping[self.labels[t]] for n, t in zip(self.names, self.target)}
        return Grouping(
            self.names,
            tuple(other.target[t] for t in self.target),
            other.labels,
            self.merges + other.merges,
            mapping if mapping is not None else self.mapping,
            other.ids if other.ids is not None else self.ids,
            other.id_names if other.id_names is not None else self.id_names,
            other.taxonomy or self.taxonomy,
        )

    def relabelled_by(self, taxonomy: Grouping) -> Grouping:
        """Keep this grouping's columns (the argmax runs over them) and give each column the stable id
        of its taxonomy label: the label map relabelled with the mapping table, as `bench` scores."""
        if tuple(taxonomy.names) != self.labels or taxonomy.ids is None:
            raise ValueError("Grouping.relabelled_by: expects a taxonomy grouping of this one's labels")
        ids = tuple(taxonomy.ids[t] for t in taxonomy.target)
        mapping = {n: taxonomy.mapping[self.labels[t]] for n, t in zip(self.names, self.target)}
        return Grouping(
            self.names, self.target, self.labels, self.merges, mapping, ids, taxonomy.id_names,
            taxonomy.taxonomy,
        )  # fmt: skip

    # ---- applying it -------------------------------------------------------------------------------
    def _index(self, device: torch.device) -> torch.Tensor:
        return torch.tensor(self.target, dtype=torch.long, device=device)

    def sum_columns(self, probs: torch.Tensor) -> torch.Tensor:
        """[Q, K] class probabilities -> [Q, K'] (the probabilities of each group summed)."""
        if self.target == tuple(range(len(self.names))):
            return probs
        out = probs.new_zeros((probs.shape[0], len(self.labels)))
        return out.index_add_(1, self._index(probs.device), probs)

    def sum_rows(self, scores: torch.Tensor) -> torch.Tensor:
        """[K, ...] per-name score maps -> [K', ...] (the maps of each group summed)."""
        if self.target == tuple(range(len(self.names))):
            return scores
        out = scores.new_zeros((len(self.labels), *scores.shape[1:]))
        return out.index_add_(0, self._index(scores.device), scores)

    def stable(self, label_map: np.ndarray) -> np.ndarray:
        """[H, W] indices into `labels` -> indices into `output_names` (-1 stays -1)."""
        if self.ids is None:
            return label_map
        lut = np.asarray([*self.ids, -1], dtype=np.int64)
        return lut[np.where(label_map >= 0, label_map, len(self.ids))]

    # ---- what the caller sees ----------------------------------------------------------------------
    @property
    def output_names(self) -> list[str]:
        """What the final label map's values index: the taxonomy's labels (stable ids), or the kept names."""
        return list(self.id_names if self.id_names is not None else self.labels)

    def audit(self) -> dict:
        """The JSON record: `merges` as [{kept, merged, rule, score}], and with a taxonomy its name, the
        label ids/names and the noun -> label mapping used."""
        out: dict = {"merges": [m.to_json() for m in self.merges]}
        if self.mapping is not None:
            out["taxonomy"] = {
                "name": self.taxonomy,
                "labels": list(self.id_names or ()),
                "other_id": len(self.id_names or ()) - 1,
                "mapping": dict(self.mapping),
            }
        return out
