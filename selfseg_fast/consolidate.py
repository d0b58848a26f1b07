"""One name per object: merge nouns that name the same thing (the paper's Fig. 8 failure), audited.

Self-Seg hands every noun to the segmenter, so a hypernym and its hyponym ("bird" and "hawk") or two
synonyms ("sofa" and "couch") compete for the same pixels and split one object into two classes. Two
rules merge such names; both are off by default (the paper's behaviour) and every merge is recorded as
`{kept, merged, rule, score}`.

1. **WordNet** (`plan_wordnet_merges`): two nouns merge when one of the most frequent noun senses of
   each (`max_senses`) are the same synset (rule "synonym", score 1) or one is a hypernym of the other
   within `max_distance` steps (rule "hypernym", score = WordNet path similarity). Guards: both senses in
   the same lexicographer file (mouse the animal never meets mouse the device), never into a very
   general ancestor (any synset in noun.Tops, or entity/object/thing/whole/...), never a part/member/
   substance of the other (wheel and car are both real segments), and, with `same_cluster_only`, only
   nouns found in a common BCC cluster. Policy `specific` keeps the hyponym (hawk over bird; a
   hypernym with several unrelated hyponyms present stays itself: "carnivore" never fuses dog and
   cat), `general` keeps the hypernym (each noun goes to its nearest present ancestor).
2. **Mask overlap** (`plan_overlap_merges`): after segmentation, two names whose score maps share
   most of their mass (soft containment = sum(min(p_a, p_b)) / min(sum p_a, sum p_b) above a threshold)
   merge; the name with the larger mass is kept.

Applying a merge (`merge_score_maps`): X-Decoder's semantic score map is linear in the class
probabilities, so the sum of two names' score maps is exactly the map of the merged class; the label
map is the argmax over the merged channels.

    scores [K, H, W] (per-name semantic scores) + merges -> scores [K', H, W], names [K']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

import torch

from selfseg_fast.config import ConsolidateConfig

# Ancestors too general to merge into (besides everything in the noun.Tops lexicographer file).
GENERAL_SYNSETS = frozenset(
    {
        "entity.n.01",
        "physical_entity.n.01",
        "abstraction.n.06",
        "object.n.01",
        "whole.n.02",
        "thing.n.12",
        "thing.n.08",
        "matter.n.03",
        "artifact.n.01",
        "instrumentality.n.03",
        "organism.n.01",
        "living_thing.n.01",
        "causal_agent.n.01",
        "location.n.01",
        "region.n.03",
        "part.n.02",
        "group.n.01",
        "unit.n.03",
    }
)


@dataclass(frozen=True)
class Merge:
    """One audited merge: `merged`'s pixels now belong to `kept`."""

    kept: str
    merged: str
    rule: Literal["synonym", "hypernym", "overlap"]
    score: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"score": round(float(self.score), 4)}


# ---- rule 1: WordNet -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Relation:
    general: str  # the noun whose sense is the ancestor (or the earlier synonym)
    specific: str
    rule: Literal["synonym", "hypernym"]
    distance: int
    score: float


class WordNetRelations:
    """Cached WordNet look-ups for noun pairs (one instance per WordNet reader)."""

    def __init__(self, wordnet: Any, cfg: ConsolidateConfig) -> None:
        self.wn = wordnet
        self.cfg = cfg
        self._senses = lru_cache(maxsize=65536)(self._senses_uncached)
        self._ancestors = lru_cache(maxsize=65536)(self._ancestors_uncached)
        self._wholes = lru_cache(maxsize=65536)(self._wholes_uncached)

    def _senses_uncached(self, noun: str) -> tuple[Any, ...]:
        return tuple(self.wn.synsets(noun.replace(" ", "_"), pos="n")[: self.cfg.max_senses])

    def _ancestors_uncached(self, synset: Any) -> dict[Any, int]:
        """Every hypernym (incl. instance hypernyms) up to max_distance steps -> its distance."""
        found: dict[Any, int] = {}
        frontier = [synset]
        for step in range(1, self.cfg.max_distance + 1):
            frontier = [h for s in frontier for h in s.hypernyms() + s.instance_hypernyms()]
            for h in frontier:
                found.setdefault(h, step)
        return found

    def _wholes_uncached(self, synset: Any) -> frozenset:
        """Everything `synset` (or one of its ancestors) is a part, member or substance of, transitively."""
        seen: set = set()
        stack = [synset, *synset.closure(lambda s: s.hypernyms())]
        while stack:
            s = stack.pop()
            for h in s.part_holonyms() + s.member_holonyms() + s.substance_holonyms():
                if h not in seen:
                    seen.add(h)
                    stack.append(h)
        return frozenset(seen)

    def _part_of(self, a: Any, b: Any) -> bool:
        """a is a part/member/substance of b or of one of b's kinds (or the other way round)."""
        b_kinds = {b, *b.closure(lambda s: s.hypernyms())}
        a_kinds = {a, *a.closure(lambda s: s.hypernyms())}
        return bool(self._wholes(a) & b_kinds) or bool(self._wholes(b) & a_kinds)

    @staticmethod
    def _too_general(synset: Any) -> bool:
        return synset.lexname() == "noun.Tops" or synset.name() in GENERAL_SYNSETS

    def relation(self, a: str, b: str) -> _Relation | None:
        """How nouns a and b relate (None: they do not, or a guard forbids merging them)."""
        best: _Relation | None = None
        for sa in self._senses(a):
            for sb in self._senses(b):
                if sa.lexname() != sb.lexname() or self._too_general(sa) or self._too_general(sb):
                    continue
                if sa == sb:
                    return _Relation(a, b, "synonym", 0, 1.0)
                if self._part_of(sa, sb):
                    continue
                for general, specific, g_noun, s_noun in ((sb, sa, b, a), (sa, sb, a, b)):
                    distance = self._ancestors(specific).get(general)
                    if distance is not None and (best is None or distance < best.distance):
                        score = specific.path_similarity(general) or 0.0
                        best = _Relation(g_noun, s_noun, "hypernym", distance, score)
        return best


def plan_wordnet_merges(
    nouns: list[str],
    cfg: ConsolidateConfig,
    wordnet: Any,
    clusters_of: dict[str, Iterable[int]] | None = None,
) -> list[Merge]:
    """The WordNet merges among `nouns` (first-seen order), each pointing at the name finally kept."""
    relations = WordNetRelations(wordnet, cfg)
    clusters = {n: set(c) for n, c in (clusters_of or {}).items()}
    pairs: list[_Relation] = []
    for i, a in enumerate(nouns):
        for b in nouns[i + 1 :]:
            if cfg.same_cluster_only and not (clusters.get(a, set()) & clusters.get(b, set())):
                continue
            rel = relations.relation(a, b)
            if rel is not None:
                pairs.append(rel)
    target: dict[str, tuple[str, _Relation]] = {}  # merged noun -> (kept noun, relation)
    for rel in (r for r in pairs if r.rule == "synonym"):  # synonyms: the later name joins the earlier
        later, earlier = (rel.specific, rel.general)
        target.setdefault(later, (earlier, rel))
    hyper = [r for r in pairs if r.rule == "hypernym"]
    if cfg.policy == "general":
        for noun in nouns:  # each noun goes to its nearest present ancestor
            ups = [r for r in hyper if r.specific == noun and r.general not in target]
            if noun not in target and ups:
                rel = min(ups, key=lambda r: (r.distance, nouns.index(r.general)))
                target[noun] = (rel.general, rel)
    else:
        for noun in nouns:  # a hypernym joins its hyponym only when its present hyponyms form one chain
            downs = [r for r in hyper if r.general == noun and r.specific not in target]
            if noun in target or not downs or not _one_chain([r.specific for r in downs], hyper):
                continue
            rel = max(downs, key=lambda r: (r.distance, -nouns.index(r.specific)))  # the deepest one
            target[noun] = (rel.specific, rel)
    return [Merge(_final(noun, target), noun, rel.rule, rel.score) for noun, (_, rel) in target.items()]


def _one_chain(names: list[str], hyper: list[_Relation]) -> bool:
    """True when every two of `names` are related by a hypernym relation (a chain, not siblings)."""
    related = {(r.general, r.specific) for r in hyper} | {(r.specific, r.general) for r in hyper}
    return all((a, b) in related for i, a in enumerate(names) for b in names[i + 1 :])


def _final(noun: str, target: dict[str, tuple[str, Any]]) -> str:
    """Follow merges to the name that is finally kept (merges chain: puppy -> dog -> canine)."""
    seen = {noun}
    while noun in target and target[noun][0] not in seen:
        noun = target[noun][0]
        seen.add(noun)
    return noun


# ---- rule 2: mask overlap ------------------------------------------------------------------------------
def soft_containment(scores: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
    """[K, H, W] non-negative score maps -> [K, K] (or [len(rows), K]):
    sum(min(p_a, p_b)) / min(sum p_a, sum p_b). One row at a time: memory K x H x W, not K^2 x H x W."""
    flat = scores.flatten(1).float()
    mass = flat.sum(1)
    rows = list(range(flat.shape[0])) if rows is None else rows
    overlap = (
        torch.stack([torch.minimum(flat[a], flat).sum(1) for a in rows])
        if rows
        else flat.new_zeros(0, len(mass))
    )
    return overlap / torch.minimum(mass[rows, None], mass[None, :]).clamp_min(1e-12)


def plan_overlap_merges(scores: torch.Tensor, names: list[str], threshold: float) -> list[Merge]:
    """Greedy merges of the most-overlapping pairs above `threshold`; the larger-mass name is kept.

    Containment is recomputed after every merge on the merged maps (only the kept name's row and
    column change), so chains merge correctly. The maps are merged in place (no copy per merge)."""
    merges: list[Merge] = []
    k = len(names)
    if k < 2:
        return merges
    maps = scores.float().flatten(1).clone()  # [K, H*W]
    mass = maps.sum(1)
    alive = torch.ones(k, dtype=torch.bool)
    contain = soft_containment(maps).fill_diagonal_(-1.0)
    while int(alive.sum()) > 1:
        value, flat_index = contain.flatten().max(0)
        if float(value) <= threshold:
            break
        a, b = divmod(int(flat_index), k)
        keep, drop = (a, b) if (float(mass[a]), -a) >= (float(mass[b]), -b) else (b, a)
        merges.append(Merge(names[keep], names[drop], "overlap", float(value)))
        maps[keep] += maps[drop]
        mass[keep] += mass[drop]
        alive[drop] = False
        contain[drop, :], contain[:, drop] = -1.0, -1.0
        row = torch.minimum(maps[keep], maps).sum(1) / torch.minimum(mass[keep], mass).clamp_min(1e-12)
        row = torch.where(alive, row, torch.full_like(row, -1.0))
        row[keep] = -1.0
        contain[keep], contain[:, keep] = row, row  # containment is symmetric
    return merges


# ---- applying merges -----------------------------------------------------------------------------------
def merge_score_maps(
    scores: torch.Tensor, names: list[str], merges: list[Merge]
) -> tuple[torch.Tensor, list[str]]:
    """Sum each merged name's score map into its kept name's: [K, H, W] -> [K', H, W], names [K']."""
    kept_of = resolve_merges(names, merges)
    out_names = [n for n in names if kept_of[n] == n]
    index = {n: i for i, n in enumerate(out_names)}
    target = torch.tensor([index[kept_of[n]] for n in names], device=scores.device)
    out = scores.new_zeros((len(out_names), *scores.shape[1:]))
    out.index_add_(0, target, scores)
    return out, out_names


def relabel(label_map: torch.Tensor, names: list[str], merges: list[Merge]) -> tuple[torch.Tensor, list[str]]:
    """A label map over `names` -> the same map over the kept names (for maps without scores)."""
    kept_of = resolve_merges(names, merges)
    out_names = [n for n in names if kept_of[n] == n]
    index = {n: i for i, n in enumerate(out_names)}
    lut = torch.tensor([index[kept_of[n]] for n in names] + [-1], dtype=label_map.dtype)
    return lut[torch.where(label_map < 0, len(names), label_map)], out_names


def resolve_merges(names: list[str], merges: list[Merge]) -> dict[str, str]:
    """name -> the name finally kept (merges chain: puppy -> dog -> canine)."""
    direct = {m.merged: m.kept for m in merges}
    unknown = sorted({m.merged for m in merges} - set(names))
    if unknown:
        raise ValueError(f"merges name {unknown} which are not among the names")
    out = {}
    for n in names:
        seen, cur = {n}, n
        while cur in direct and direct[cur] not in seen:
            cur = direct[cur]
            seen.add(cur)
        out[n] = cur
    return out


def consolidate_scores(
    scores: torch.Tensor,
    names: list[str],
    cfg: ConsolidateConfig,
    wordnet_loader: Callable[[], Any],
    clusters_of: dict[str, Iterable[int]] | None = None,
) -> tuple[torch.Tensor, list[str], list[Merge]]:
    """Both rules as configured: WordNet merges first, then overlap merges on the merged maps."""
    merges: list[Merge] = []
    if cfg.wordnet and len(names) > 1:
        merges += plan_wordnet_merges(names, cfg, wordnet_loader(), clusters_of)
        scores, names = merge_score_maps(scores, names, merges)
    if cfg.overlap and len(names) > 1:
        extra = plan_overlap_merges(scores, names, cfg.overlap_threshold)
        scores, names = merge_score_maps(scores, names, extra)
        merges += extra
    return scores, names, merges
