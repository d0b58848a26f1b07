"""What a segmentation's classes are called: competing-noun consolidation and a taxonomy, per image.

The pipeline builds one `NamePlanner` per (consolidate, taxonomy) configuration; per image it hands the
segmenter a `NameGrouper` (bound to the image's BCC clusters), which the segmenter asks for the grouping
of its names once it has the class probabilities:

    names [K] --WordNet merges (name level)--> kept [K1]
              --mask-overlap merges (score maps at the mask resolution, summed per group)--> [K2]
              --taxonomy (LOVE, cached)--> present labels [K3], stable ids in the whole label set
    -> Grouping (grouping.py): probs [Q, K] -> [Q, K3] before the label map; audit JSON

Everything is off by default (the paper's output); with both sections off the pipeline never builds
a planner.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import cached_property

import torch

from selfseg_fast.config import ConsolidateConfig, TaxonomyConfig
from selfseg_fast.consolidate import plan_overlap_merges, plan_wordnet_merges
from selfseg_fast.grouping import Grouping
from selfseg_fast.taxonomy import Taxonomy, load_vocabulary


class NamePlanner:
    """Consolidation and taxonomy settings, with the WordNet reader and the taxonomy's LOVE mapper
    loaded on first use. The taxonomy file is read here (a bad file fails before any model loads)."""

    def __init__(self, consolidate: ConsolidateConfig, taxonomy: TaxonomyConfig) -> None:
        self.consolidate = consolidate
        self.taxonomy_cfg = taxonomy
        self.vocabulary = load_vocabulary(taxonomy.labels) if taxonomy.active else None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.consolidate.active or self.vocabulary is not None

    @cached_property
    def wordnet(self):
        from selfseg_fast.nlp_data import wordnet

        return wordnet()

    @cached_property
    def taxonomy(self) -> Taxonomy | None:
        """The LOVE mapper onto the label set (an LLM back-end loads here, on first use)."""
        if self.vocabulary is None:
            return None
        from selfseg_fast.evaluation.llm import build_mapper
        from selfseg_fast.evaluation.love import LoveCache

        tx = self.taxonomy_cfg
        mapper = build_mapper(tx.llm, None, model=tx.llm_model)
        return Taxonomy(self.vocabulary, mapper, LoveCache(tx.cache), merge=tx.merge)

    def for_image(self, cluster_nouns: dict[int, Iterable[str]] | None = None) -> NameGrouper:
        return NameGrouper(self, cluster_nouns)


class NameGrouper:
    """One image's grouping rules. `needs_scores`: the segmenter must pass the per-name score maps at
    the mask resolution (the overlap rule)."""

    def __init__(self, planner: NamePlanner, cluster_nouns: dict[int, Iterable[str]] | None) -> None:
        self.planner = planner
        self.clusters_of: dict[str, set[int]] = {}
        for cid, nouns in (cluster_nouns or {}).items():
            for noun in nouns:
                self.clusters_of.setdefault(noun, set()).add(int(cid))

    @property
    def needs_scores(self) -> bool:
        return self.planner.consolidate.overlap

    def plan(self, names: list[str], mask_scores: torch.Tensor | None = None) -> Grouping:
        """The grouping of `names` (mask_scores [K, h, w]: per-name score maps at the mask resolution,
        needed when `needs_scores`)."""
        cfg, planner = self.planner.consolidate, self.planner
        grouping = Grouping.identity(names)
        if cfg.wordnet and len(names) > 1:
            with planner._lock:  # one WordNet reader, shared by the threads of a service
                merges = plan_wordnet_merges(list(names), cfg, planner.wordnet, self.clusters_of)
            grouping = Grouping.from_merges(names, merges)
        if cfg.overlap and len(grouping.labels) > 1:
            if mask_scores is None:
                raise ValueError("NameGrouper.plan: the overlap rule needs the mask-resolution score maps")
            merged = grouping.sum_rows(mask_scores.float())
            extra = plan_overlap_merges(merged, list(grouping.labels), cfg.overlap_threshold)
            grouping = grouping.then(Grouping.from_merges(grouping.labels, extra))
        if planner.vocabulary is not None:
            onto = self._taxonomy_grouping(list(grouping.labels))
            if planner.taxonomy_cfg.merge == "relabel":  # the argmax over the names, then the table
                grouping = grouping.relabelled_by(onto)
            else:  # the argmax over the labels' summed scores
                grouping = grouping.then(onto)
        return grouping

    def _taxonomy_grouping(self, kept: list[str]) -> Grouping:
        """kept names -> the taxonomy labels present among them, with their stable ids."""
        taxonomy = self.planner.taxonomy
        with self.planner._lock:
            ids = taxonomy.label_ids(kept)
        present = sorted(set(ids))  # stable-id order
        column = {label_id: j for j, label_id in enumerate(present)}
        return Grouping(
            tuple(kept),
            tuple(column[i] for i in ids),
            tuple(taxonomy.labels[i] for i in present),
            mapping={noun: taxonomy.labels[i] for noun, i in zip(kept, ids)},
            ids=tuple(present),
            id_names=tuple(taxonomy.labels),
            taxonomy=taxonomy.vocabulary.dataset,
        )
