"""Load the official X-Decoder `.pt` checkpoints into our port by their own parameter names.

Our modules reproduce the official module tree (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
`sem_seg_head.predictor.*`, `sem_seg_head.predictor.lang_encoder.*`), so loading is a name-for-name copy.
What the loader adds:
  - reading from a local path, an http(s) URL (downloaded once into the torch hub cache) or a short name
    of a released checkpoint (`OFFICIAL_CHECKPOINTS`);
  - unwrapping (`{"model": ...}` / `{"state_dict": ...}`, a `module.` or `model.` prefix on every key)
    and an optional explicit prefix map (`key_map`) for renamed layouts;
  - a report of every key: loaded, missing (ours, absent from the file), unexpected (in the file, unknown),
    ignored (in the file, known to be unused by semantic segmentation: `UNUSED_FOR_SEMSEG`) and shape
    mismatches. `strict=True` (the default) raises a one-line `WeightsError` unless everything is
    accounted for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from selfseg_fast.errors import WeightsError

_HF = "https://huggingface.co/xdecoder/X-Decoder/resolve/main/"
OFFICIAL_CHECKPOINTS: dict[str, str] = {
    "xdecoder_focalt_last": _HF + "xdecoder_focalt_last.pt",  # configs/xdecoder/focalt_unicl_lang.yaml
    "xdecoder_focalt_best_openseg": _HF + "xdecoder_focalt_best_openseg.pt",  # svlp_focalt_lang.yaml
    "xdecoder_focall_last": _HF + "xdecoder_focall_last.pt",  # focall_unicl_lang.yaml
}
DEFAULT_CHECKPOINT = {"focal-t": "xdecoder_focalt_last", "focal-l": "xdecoder_focall_last"}

# Official keys that semantic-segmentation inference never reads (captioning, retrieval, the training
# criterion). They are ignored only when the model has no parameter of that name.
UNUSED_FOR_SEMSEG: tuple[str, ...] = (
    r"backbone_proj",  # image-text retrieval projection
    r"criterion\..*",  # training loss buffers (empty_weight)
    r"sem_seg_head\.predictor\.caping_embed",  # captioning head
    r"sem_seg_head\.predictor\.pos_embed_caping\.weight",
    r"sem_seg_head\.predictor\.self_attn_mask",  # buffer; also derivable from num_queries
)


@dataclass
class LoadReport:
    """Where every key went. Names are checkpoint keys (after unwrapping and `key_map`)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model lacks (not ignorable)
    ignored: list[str] = field(default_factory=list)  # checkpoint keys known to be unused
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One line, e.g. 'loaded 721, ignored 5, missing 0, unexpected 0, shape mismatches 0'."""
        text = (
            f"loaded {len(self.loaded)}, ignored {len(self.ignored)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape mismatches {len(self.mismatched)}"
        )
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                text += f"; {label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        if self.mismatched:
            key, want, got = self.mismatched[0]
            text += f"; {key}: model {want} vs checkpoint {got}"
        return text


def resolve_source(source: str | Path) -> str:
    """A short name of a released checkpoint -> its URL; anything else unchanged."""
    return OFFICIAL_CHECKPOINTS.get(str(source), str(source))


def read_checkpoint(source: str | Path, *, cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors from a local path, an http(s) URL or a released checkpoint's name."""
    src = resolve_source(source)
    try:
        if re.match(r"https?://", src):
            model_dir = str(cache_dir) if cache_dir is not None else None
            obj = torch.hub.load_state_dict_from_url(
                src, model_dir=model_dir, map_location="cpu", weights_only=True
            )
        else:
            path = Path(src).expanduser()
            if not path.is_file():
                raise WeightsError(
                    "checkpoint file not found; pass a local .pt path, an http(s) URL or one of: "
                    + ", ".join(OFFICIAL_CHECKPOINTS),
                    path=str(path),
                )
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # network, unpickling or zip errors all mean: this file cannot be used
        raise WeightsError(
            f"cannot read the X-Decoder checkpoint ({type(exc).__name__}: {exc}); download it by hand "
            "and pass the local .pt path",
            path=src,
        ) from exc
    return unwrap_state_dict(obj, source=src)


def unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Bare, {"model": sd} or {"state_dict": sd}; a `module.` or `model.` prefix on every key is dropped."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("not a state dict of tensors; pass an official X-Decoder .pt file", path=source)
    sd = dict(obj)
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def apply_key_map(
    state_dict: Mapping[str, torch.Tensor], key_map: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """Rename key prefixes: {"old.prefix.": "new.prefix."}; the longest matching prefix wins."""
    if not key_map:
        return dict(state_dict)
    prefixes = sorted(key_map, key=len, reverse=True)
    out = {}
    for key, value in state_dict.items():
        for p in prefixes:
            if key.startswith(p):
                key = key_map[p] + key[len(p) :]
                break
        out[key] = value
    return out


def select_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` with it stripped, e.g. select_prefix(sd, "backbone.") for a FocalNet."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def match_state_dict(
    model_shapes: Mapping[str, torch.Size | tuple[int, ...]],
    checkpoint: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    *,
    ignore: tuple[str, ...] = UNUSED_FOR_SEMSEG,
) -> LoadReport:
    """Account for every key by name and shape only (works on meta tensors; nothing is copied)."""
    report = LoadReport()
    patterns = [re.compile(p) for p in ignore]
    for key, value in checkpoint.items():
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)
        if key in model_shapes:
            want = tuple(model_shapes[key])
            if want == got:
                report.loaded.append(key)
            else:
                report.mismatched.append((key, want, got))
        elif any(p.fullmatch(key) for p in patterns):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.missing = [k for k in model_shapes if k not in checkpoint]
    return report


def load_official_weights(
    model: nn.Module,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    prefix: str = "",
    key_map: Mapping[str, str] | None = None,
    ignore: tuple[str, ...] = UNUSED_FOR_SEMSEG,
    strict: bool = True,
) -> LoadReport:
    """Copy an official checkpoint into `model` by parameter name; return where every key went.

    source: a path / URL / released name, or an already-read state dict. prefix: load only the keys under
    it, stripped (e.g. "backbone." into a bare FocalNet). strict: raise WeightsError unless every model key
    is filled and every checkpoint key is loaded or known-unused.
    """
    name = "state dict" if isinstance(source, Mapping) else resolve_source(source)
    sd = unwrap_state_dict(source, source=name) if isinstance(source, Mapping) else read_checkpoint(source)
    sd = apply_key_map(sd, key_map or {})
    if prefix:
        sd = select_prefix(sd, prefix)
    own = model.state_dict()
    report = match_state_dict({k: v.shape for k, v in own.items()}, sd, ignore=ignore)
    if strict and not report.ok:
        raise WeightsError(
            f"checkpoint does not fit this X-Decoder configuration ({report.summary()}); check the variant "
            "(focal-t / focal-l) matches the checkpoint",
            path=name,
        )
    model.load_state_dict({k: sd[k] for k in report.loaded}, strict=False)
    return report
