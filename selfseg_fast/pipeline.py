"""The load-once Python API: `describe` names what is in images, `segment` segments images with given
names, `run` does both (the self-guided pipeline).

    pipe = SelfSegPipeline.from_pretrained("voc")            # or weights="random-tiny", device="cuda", ...
    result = pipe.run("photo.jpg")                           # result.class_names, result.label_map
    results = pipe.run([Image.open(p), np.asarray(...)])     # a list in, a list out

Every call takes a path, a PIL image, a numpy array, a torch tensor, or a list of them (`inputs.py`);
one image in gives one result, a list gives a list. Models load on first use: BLIP (and spaCy,
WordNet) for `describe`/`run`, X-Decoder for `segment`/`run`, so `segment` with given names never
needs BLIP. `load()` loads both up front (services).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from selfseg_fast.config import SelfSegConfig, naming_problems
from selfseg_fast.engines.base import Engine, build_engine, resolve_device
from selfseg_fast.errors import SelfSegError
from selfseg_fast.grouping import Grouping
from selfseg_fast.images import LoadedImage
from selfseg_fast.inputs import as_image, as_images, names_per_image
from selfseg_fast.naming import NamePlanner
from selfseg_fast.optional_deps import check_available
from selfseg_fast.plan import resolve_plan
from selfseg_fast.progress_hook import report
from selfseg_fast.records import ImageResult
from selfseg_fast.resegment import resegment
from selfseg_fast.timing import StageTimer


@dataclass
class Segmentation:
    """Self-guided segmentation of one image: the BCC record plus a label map over its nouns (with
    consolidation: the kept nouns; with a taxonomy: the taxonomy's labels, stable ids, `other` last)."""

    description: ImageResult
    class_names: list[str]
    label_map: np.ndarray  # [H, W] int64, index into class_names (-1: no names were found)
    grouping: Grouping | None = None  # consolidation / taxonomy applied (None: off)

    @property
    def degraded(self) -> bool:
        """A deadline cut the caption cycles short: the names are those found in time."""
        return self.description.degraded

    @property
    def merges(self) -> list:
        """The consolidation merges ({kept, merged, rule, score} via `audit()`); [] when off."""
        return list(self.grouping.merges) if self.grouping is not None else []

    def audit(self) -> dict:
        """{"merges": [...], "taxonomy": {...}} for the JSON outputs; {} when both are off."""
        return self.grouping.audit() if self.grouping is not None else {}


@dataclass
class NamedMap:
    """`segment`'s result when consolidation or a taxonomy is on: the names of the map change."""

    label_map: np.ndarray  # [H, W] int64, index into class_names (-1: unlabelled)
    class_names: list[str]
    grouping: Grouping

    @property
    def merges(self) -> list:
        return list(self.grouping.merges)

    def audit(self) -> dict:
        return self.grouping.audit()


class SelfSegPipeline:
    """Models loaded once, on first use; thread-compatible, not re-entrant: serve concurrent callers
    through `selfseg_fast.serving.MicroBatcher`."""

    def __init__(self, cfg: SelfSegConfig | None = None) -> None:
        self.cfg = (cfg or SelfSegConfig()).validated(for_pipeline=True)  # fails here, before any model loads
        if self.cfg.engine == "reference":
            check_available("crfseg")  # the reference CRF's package: one line naming the fix, now
        self.device = resolve_device(self.cfg)
        self.plan = resolve_plan(self.cfg, self.device)  # the engines and the segmenter resolve the same
        self._engine: Engine | None = None
        self._segmenter = None
        self._loading = threading.Lock()
        self._planners: dict[tuple, NamePlanner | None] = {}
        self.planner(())  # a bad taxonomy file fails here, before any model loads

    @classmethod
    def from_pretrained(
        cls,
        preset_or_config: str | Path | SelfSegConfig = "voc",
        *,
        weights: str | None = None,
        device: str | None = None,
        engine: str | None = None,
        blip: str | None = None,
        checkpoint: str | None = None,
        **overrides: Any,
    ) -> SelfSegPipeline:
        """A pipeline from a preset name ("voc", "ade20k", "cityscapes"), a JSON config file or a
        `SelfSegConfig`, with keyword overrides of any config field: top-level ones by name
        (`seed=1`, `batch_size=8`, `dtype="bfloat16"`), nested ones as `caption={"cycles": 3}` or
        `caption__cycles=3`. `weights`: "pretrained" (default; the hub or a local folder), "random"
        (full size) or "random-tiny"; `blip`: a BLIP hub id or folder; `checkpoint`: an X-Decoder .pt
        file or URL. Unknown or invalid values are a one-line SelfSegError; nothing loads here."""
        cfg = _base_config(preset_or_config)
        named = {"weights": weights, "device": device, "engine": engine, "blip_model": blip}
        changes = {key: value for key, value in named.items() if value is not None}
        if checkpoint is not None:
            changes["segmenter.checkpoint"] = checkpoint
        changes.update({key.replace("__", "."): value for key, value in overrides.items()})
        return cls(cfg.with_overrides(changes))

    # ---- models, loaded on first use --------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The BLIP-Cluster-Caption engine (BLIP, spaCy, WordNet), built on first use."""
        if self._engine is None:
            with self._loading:
                if self._engine is None:
                    report(f"loading BLIP ({self.cfg.weights}) and the {self.cfg.engine} engine")
                    self._engine = build_engine(self.cfg)
        return self._engine

    @property
    def segmenter(self):
        """The X-Decoder segmenter, built on first use (a `caption`-only user never pays for it), with
        the engine's plan (fp16, channels_last and its own CUDA stream for the fast engine on CUDA)."""
        if self._segmenter is None:
            with self._loading:
                if self._segmenter is None:
                    from selfseg_fast.models.xdecoder.segmenter import build_segmenter

                    report(f"loading X-Decoder ({self.cfg.segmenter.variant}, {self.cfg.weights})")
                    self._segmenter = build_segmenter(self.cfg, self.device, self.plan)
        return self._segmenter

    def load(self, *, describe: bool = True, segment: bool = True) -> SelfSegPipeline:
        """Load the models now instead of on first use (a service before its first request)."""
        if describe:
            _ = self.engine
        if segment:
            _ = self.segmenter
        return self

    # ---- consolidation and taxonomy (naming.py) ---------------------------------------------------
    def planner(self, naming: tuple[tuple[str, Any], ...] = ()) -> NamePlanner | None:
        """The NamePlanner of this config with a request's overrides (None: both features off)."""
        if naming not in self._planners:
            cfg = self.cfg.with_overrides(dict(naming)) if naming else self.cfg
            if naming and (problems := naming_problems(cfg)):
                raise SelfSegError("invalid request: " + "; ".join(problems))
            planner = NamePlanner(cfg.consolidate, cfg.taxonomy)
            self._planners[naming] = planner if planner.active else None
        return self._planners[naming]

    @property
    def naming_active(self) -> bool:
        """Consolidation or a taxonomy is on in the config (results carry their audit)."""
        return self.planner(()) is not None

    def _grouper(self, image: LoadedImage, cluster_nouns: dict | None):
        planner = self.planner(image.naming)
        return planner.for_image(cluster_nouns) if planner is not None else None

    # ---- public calls: any image input, one in -> one out, a list in -> a list out ----------------
    def describe(self, images: Any, *, deadline_ms: float | None = None) -> ImageResult | list[ImageResult]:
        """BLIP-Cluster-Caption + nouns for each image. `deadline_ms` (from now) bounds the caption
        cycles: past it, an image keeps the names found so far and its result says `degraded`."""
        loaded, single = as_images(images)
        results = self._describe(with_deadline(loaded, deadline_ms))
        return results[0] if single else results

    def describe_stream(self, images: Iterable[Any]) -> Iterator[ImageResult]:
        """Like `describe`, for an iterable of any length: results come in input order as they finish."""
        return self.engine.describe_stream(as_image(image, f"image[{i}]") for i, image in enumerate(images))

    def segment(
        self,
        images: Any,
        class_names: Sequence[str] | Sequence[Sequence[str]],
        *,
        consolidate: str | dict | None = None,
        taxonomy: str | dict | None = None,
        cluster_nouns: Sequence[dict] | None = None,
    ) -> np.ndarray | list[np.ndarray] | NamedMap | list[NamedMap]:
        """Open-vocabulary segmentation with given names -> [H, W] int64 label maps (index into the
        names, -1 where no name was given). `class_names`: one list for all images, or one per image.
        With consolidation or a taxonomy on (config, or `consolidate`/`taxonomy` here, as in `run`) the
        names change, so each result is a `NamedMap` (label_map, class_names, merges, audit()).
        `cluster_nouns`: per image {cluster id: nouns}, for consolidate.same_cluster_only."""
        loaded, single = as_images(images)
        try:
            names = names_per_image(class_names, len(loaded))
        except ValueError as exc:
            raise SelfSegError(str(exc)) from None
        loaded = with_naming(loaded, consolidate, taxonomy)
        if not any(self.planner(image.naming) for image in loaded):
            maps = self._segment(loaded, names)
            return maps[0] if single else maps
        clusters = list(cluster_nouns) if cluster_nouns is not None else [None] * len(loaded)
        out = [
            NamedMap(label_map, grouping.output_names, grouping)
            for label_map, grouping in self._segment_grouped(loaded, names, clusters)
        ]
        return out[0] if single else out

    def run(
        self,
        images: Any,
        *,
        deadline_ms: float | None = None,
        consolidate: str | dict | None = None,
        taxonomy: str | dict | None = None,
    ) -> Segmentation | list[Segmentation]:
        """The self-guided pipeline: describe, then segment each image with its own nouns
        (`deadline_ms`: as in `describe`). `consolidate`: "off" | "specific" | "general" or a dict of
        consolidate fields ({"mode": "specific", "overlap_threshold": 0.6}); `taxonomy`: "cityscapes" |
        "ade20k" | "voc" | a JSON file, or a dict of taxonomy fields; None: the config's."""
        loaded, single = as_images(images)
        results = self._run(with_deadline(with_naming(loaded, consolidate, taxonomy), deadline_ms))
        return results[0] if single else results

    # ---- the work, on loaded images ----------------------------------------------------------------
    def _describe(self, images: list[LoadedImage]) -> list[ImageResult]:
        return self.engine.describe(images)

    def _segment(self, images: list[LoadedImage], class_names: list[list[str]]) -> list[np.ndarray]:
        """Label maps over the names as given (no consolidation, no taxonomy)."""
        return [m for m, _ in self._segment_grouped(images, class_names, [None] * len(images), plain=True)]

    def _segment_grouped(
        self,
        images: list[LoadedImage],
        class_names: list[list[str]],
        cluster_nouns: list[dict | None],
        plain: bool = False,
    ) -> list[tuple[np.ndarray, Grouping]]:
        """([H, W] label map, its grouping) per image; every request is checked against the
        segmenter's limits before any work (ResourceError). `plain`: the names as given."""
        out: list[tuple[np.ndarray, Grouping] | None] = [None] * len(images)
        groupers = [None if plain else self._grouper(im, c) for im, c in zip(images, cluster_nouns)]
        todo = [i for i, names in enumerate(class_names) if names]
        for i, image in enumerate(images):
            if not class_names[i]:  # nothing was named: every pixel is unlabelled
                out[i] = (np.full(image.rgb.shape[:2], -1, dtype=np.int64), _empty_grouping(groupers[i]))
        if todo:
            seg = self.segmenter
            for i in todo:
                extra = {"mask_scores": True} if groupers[i] is not None and groupers[i].needs_scores else {}
                seg.check_request(*images[i].rgb.shape[:2], len(class_names[i]), what=images[i].path, **extra)
            if self.plan.engine == "fast":  # one image-branch pass per padded size, then names
                for i, branch in zip(todo, seg.image_branch([images[i].rgb for i in todo])):
                    if groupers[i] is None:  # off: the paper's path, untouched
                        out[i] = (seg.label_map(branch, class_names[i]), Grouping.identity(class_names[i]))
                    else:
                        out[i] = seg.label_map_grouped(branch, class_names[i], groupers[i])
            else:
                for i in todo:
                    if groupers[i] is None:
                        out[i] = (
                            seg.segment(images[i].rgb, class_names[i]),
                            Grouping.identity(class_names[i]),
                        )
                    else:
                        out[i] = seg.segment_grouped(images[i].rgb, class_names[i], groupers[i])
        return out

    def _run(self, images: list[LoadedImage]) -> list[Segmentation]:
        """Describe, then segment each image with its own nouns (at most `segmenter.max_names`,
        first-seen order). Fast engine: the segmenter's image branch (which needs no names) runs on its
        own worker and stream while the engine describes, batch by batch."""
        seg = self.segmenter
        for image in images:  # refuse what cannot fit before any work (the names are not known yet)
            seg.check_request(*image.rgb.shape[:2], 1, what=image.path)
        if self.plan.engine != "fast":
            described = self._describe(images)
            return [self._segment_described(image, result) for image, result in zip(images, described)]
        feeder = _BranchFeeder(images, seg, lambda: getattr(self.engine, "batch_size", 1))
        pending = []
        for i, result in enumerate(self.engine.describe_stream(feeder)):
            names = seg.sc.first_names(result.nouns)
            branch = feeder.take(i)
            grouper = self._grouper(images[i], result.cluster_nouns)
            finish = (lambda b, n, g=grouper: seg.finish(b, n, g)) if grouper is not None else seg.finish
            pending.append((result, names, grouper, finish(branch, names) if names else None))
        out = []
        for image, (result, names, grouper, segmented) in zip(images, pending):
            grouping = _empty_grouping(grouper) if grouper is not None else None
            if segmented is None:  # nothing was named: every pixel is unlabelled
                label_map, seconds = np.full(image.rgb.shape[:2], -1, dtype=np.int64), 0.0
            else:
                done = segmented.result()
                label_map, seconds = done.label_map, done.seconds
                grouping = done.grouping if grouper is not None else None
            timer = StageTimer(sync=True)
            with timer("resegment"):  # maskblip's second pass (a no-op by default), counted as segment
                label_map, names = self._resegment(image, label_map, _names_of(names, grouping))
            result.stage_seconds["segment"] = round(seconds + timer.as_dict().get("resegment", 0.0), 6)
            out.append(Segmentation(result, names, label_map, grouping))
        return out

    def _resegment(self, image: LoadedImage, label_map: np.ndarray, names: list[str]):
        """maskblip's second pass (--authors-code maskblip); a no-op unless configured."""
        return resegment(label_map, names, lambda kept: self._segment([image], [kept])[0], self.cfg.segmenter)

    def _segment_described(self, image: LoadedImage, result: ImageResult) -> Segmentation:
        """Reference engine: the official per-image segmentation after the image is described."""
        names = self.segmenter.sc.first_names(result.nouns)
        timer = StageTimer(sync=True)
        with timer("segment"):
            ((label_map, grouping),) = self._segment_grouped([image], [names], [result.cluster_nouns])
            label_map, names = self._resegment(image, label_map, grouping.output_names)
        result.stage_seconds.update(timer.as_dict())
        active = self.planner(image.naming) is not None
        return Segmentation(result, names, label_map, grouping if active else None)


def _empty_grouping(grouper) -> Grouping:
    """The grouping of an image with no names (a taxonomy still names its label set)."""
    return grouper.plan([]) if grouper is not None else Grouping.identity([])


def _names_of(names: list[str], grouping: Grouping | None) -> list[str]:
    return grouping.output_names if grouping is not None and names else names


def with_naming(
    images: list[LoadedImage], consolidate: str | dict | None, taxonomy: str | dict | None
) -> list[LoadedImage]:
    """The images with a request's consolidate/taxonomy settings (None: the config's)."""
    naming = naming_overrides(consolidate, taxonomy)
    return [dataclasses.replace(image, naming=naming) for image in images] if naming else images


def naming_overrides(consolidate: str | dict | None, taxonomy: str | dict | None) -> tuple:
    """`consolidate="specific"` / `taxonomy="voc"` (or dicts of section fields) -> sorted config
    override items, e.g. (("consolidate.mode", "specific"), ("taxonomy.labels", "voc"))."""
    items: dict[str, Any] = {}
    for section, value, key in ((("consolidate", consolidate, "mode")), ("taxonomy", taxonomy, "labels")):
        if value is None:
            continue
        if isinstance(value, str):
            value = {key: value}
        if not isinstance(value, dict):
            raise SelfSegError(f"{section}={value!r}: give a string or a dict of {section} fields")
        items.update({f"{section}.{k}": v for k, v in value.items()})
    return tuple(sorted(items.items()))


def with_deadline(images: list[LoadedImage], deadline_ms: float | None) -> list[LoadedImage]:
    """The images with an absolute caption deadline `deadline_ms` from now (None: unchanged)."""
    if deadline_ms is None:
        return images
    if not deadline_ms > 0:
        raise SelfSegError(f"deadline_ms = {deadline_ms!r}: must be a positive number of milliseconds")
    deadline = time.monotonic() + deadline_ms / 1000
    return [dataclasses.replace(image, deadline=deadline) for image in images]


class _BranchFeeder:
    """Yields the images to the engine and queues the segmenter's image branch of each group of an
    engine batch's size as the engine starts reading the group that follows it; `take(i)` hands out
    image i's branch (queued now if the engine got ahead of the feeder)."""

    def __init__(self, images: list[LoadedImage], segmenter, batch_size) -> None:
        self.images, self.segmenter, self.batch_size = images, segmenter, batch_size
        self.branches: dict[int, Future] = {}
        self.queued: set[int] = set()

    def __iter__(self) -> Iterator[LoadedImage]:
        group: list[int] = []
        for i, image in enumerate(self.images):
            if len(group) >= self.batch_size():
                self._queue(group)
                group = []
            group.append(i)
            yield image
        self._queue(group)

    def _queue(self, group: list[int]) -> None:
        group = [i for i in group if i not in self.queued]
        if group:
            self.queued.update(group)
            self.branches.update(zip(group, self.segmenter.start([self.images[i].rgb for i in group])))

    def take(self, i: int) -> Future:
        self._queue([i])
        return self.branches.pop(i)


def _base_config(preset_or_config: str | Path | SelfSegConfig) -> SelfSegConfig:
    """A preset name, a JSON config file, or a config (copied, so the caller's object is not shared)."""
    if isinstance(preset_or_config, SelfSegConfig):
        return preset_or_config.replace()
    text = str(preset_or_config)
    if text.endswith(".json") or Path(text).is_file():
        return SelfSegConfig.from_file(text)
    return SelfSegConfig.from_preset(text)
