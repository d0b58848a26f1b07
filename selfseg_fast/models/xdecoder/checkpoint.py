"""Load the official X-Decoder `.pt` checkpoints into our port by their own parameter names.

Our modules reproduce the official module tree (`backbone.*`, `sem_seg_head.pixel_decoder.*`,
`sem_seg_head.predictor.*`, `sem_seg_head.predictor.lang_encoder.*`), so loading is a name-for-name copy.
What the loader adds:
  - where the file comes from (`resolve`): a local path; a released checkpoint's name (`KNOWN_CHECKPOINTS`,
    e.g. `xdecoder_focalt_last` or `xdecoder_focalt_last.pt`), an `hf://owner/repo/file.pt` reference or a
    huggingface.co URL, all fetched with `huggingface_hub.hf_hub_download` (the HF cache, HF_HOME,
    HF_HUB_OFFLINE, HF_TOKEN, mirrors via HF_ENDPOINT; `NAME@REVISION` or `--revision` pins a branch, tag
    or commit); any other https URL, downloaded once into our cache under a key derived from the whole
    URL (never from the file name, so another URL cannot stand in for an official file). Plain http is
    refused unless SELFSEG_ALLOW_HTTP=1;
  - the SHA-256 of every released checkpoint, checked after download (a mismatch is refused; a local
    file with a released name that does not match gets a warning), and remembered per file so a
    checkpoint is hashed once, not at every start;
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
from selfseg_fast.models.xdecoder.checkpoint_files import (  # noqa: F401 - re-exported
    DEFAULT_CHECKPOINT,
    KNOWN_CHECKPOINTS,
    OFFICIAL_CHECKPOINTS,
    fetch_checkpoint,
)

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
    """A released checkpoint's name -> its address on the hub (for messages); anything else unchanged."""
    text = str(source)
    return OFFICIAL_CHECKPOINTS.get(text.removesuffix(".pt"), text)


def read_checkpoint(
    source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Read a checkpoint's tensors from a local path, a released name, the hub or an https URL
    (`checkpoint_files.fetch_checkpoint`: cached, SHA-256 verified)."""
    path = fetch_checkpoint(source, revision, cache_dir)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling or zip errors all mean: this file cannot be used
        raise WeightsError(
            f"cannot read the X-Decoder checkpoint ({type(exc).__name__}: {exc}); pass an official .pt file",
            path=str(path),
        ) from exc
    return unwrap_state_dict(obj, source=str(path))


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


# ---- the official state-dict layout ------------------------------------------------------------------
# Enumerated from the official module tree (microsoft/X-Decoder v1.0: backbone/focal_dw.py and focal.py,
# body/encoder/transformer_encoder_fpn.py, body/decoder/xdecoder.py, language/vlpencoder.py,
# LangEncoder/transformer.py, architectures/xdecoder_model.py), independently of our modules, so a test can
# check that our port consumes every official key: 726 keys for Focal-T, 930 for Focal-L.

Shape = tuple[int, ...]


@dataclass(frozen=True)
class OfficialLayout:
    """The sizes that fix the official key names and shapes (defaults: Focal-T)."""

    embed: int = 96
    depths: Shape = (2, 2, 6, 2)
    focal_levels: Shape = (3, 3, 3, 3)
    depthwise: bool = True  # focal_dw (Focal-T) vs focal (Focal-L)
    queries: int = 101  # NUM_OBJECT_QUERIES: 100 object queries + 1 class token
    hidden: int = 512  # decoder hidden, CONVS_DIM, MASK_DIM
    proj: int = 512  # DIM_PROJ: the shared text/query embedding size
    ffn: int = 2048
    enc_layers: int = 6
    dec_layers: int = 9  # DEC_LAYERS 10 in the config; the code builds DEC_LAYERS - 1
    text_width: int = 512
    text_layers: int = 12
    vocab: int = 49408
    context: int = 77
    num_classes: int = 133  # COCO panoptic: criterion.empty_weight has num_classes + 1 entries

    @classmethod
    def from_official(cls, cfg: Mapping) -> OfficialLayout:
        """The layout an official config (parsed yaml with MODEL) gives: read by
        XDecoderConfig.from_official, plus the training criterion's class count."""
        from selfseg_fast.models.xdecoder.config import XDecoderConfig

        model = XDecoderConfig.from_official(cfg)
        backbone, dec, lang = model.backbone, model.decoder, model.language
        return cls(
            embed=backbone.embed_dim,
            depths=backbone.depths,
            focal_levels=backbone.focal_levels,
            depthwise=backbone.variant == "focal_dw",
            queries=dec.num_queries,
            hidden=dec.hidden,
            proj=dec.proj_dim,
            ffn=dec.ffn_dim,
            enc_layers=model.pixel.encoder_layers,
            dec_layers=dec.dec_layers - 1,
            text_width=lang.width,
            text_layers=lang.layers,
            vocab=lang.vocab_size,
            context=lang.context_length,
            num_classes=cfg["MODEL"]["ENCODER"].get("NUM_CLASSES", 133),
        )


OFFICIAL_LAYOUTS = {
    "focal-t": OfficialLayout(),
    "focal-l": OfficialLayout(
        embed=192, depths=(2, 2, 18, 2), focal_levels=(4, 4, 4, 4), depthwise=False, queries=201
    ),
}


def _affine(name: str, n_out: int, n_in: int | None = None) -> dict[str, Shape]:
    """Linear (n_in given) or norm (n_in None) weight + bias."""
    return {f"{name}.weight": (n_out, n_in) if n_in is not None else (n_out,), f"{name}.bias": (n_out,)}


def _mha(name: str, d: int) -> dict[str, Shape]:
    return {
        f"{name}.in_proj_weight": (3 * d, d),
        f"{name}.in_proj_bias": (3 * d,),
        **_affine(f"{name}.out_proj", d, d),
    }


def _official_backbone(lay: OfficialLayout) -> dict[str, Shape]:
    e = lay.embed
    out = {
        "patch_embed.proj.weight": (e, 3, 7, 7),
        "patch_embed.proj.bias": (e,),
        **_affine("patch_embed.norm", e),
    }
    for i, depth in enumerate(lay.depths):
        c, lv = e * 2**i, lay.focal_levels[i]
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            dw = {p + "dw1.weight": (c, 1, 3, 3), p + "dw1.bias": (c,)} if lay.depthwise else {}
            out.update(dw)
            out.update(_affine(p + "norm1", c))
            out.update(_affine(p + "modulation.f", 2 * c + lv + 1, c))
            out.update({p + "modulation.h.weight": (c, c, 1, 1), p + "modulation.h.bias": (c,)})
            out.update(_affine(p + "modulation.proj", c, c))
            for level in range(lv):
                k = 3 + 2 * level  # focal_factor 2 * level + focal_window 3
                out[p + f"modulation.focal_layers.{level}.0.weight"] = (c, 1, k, k)
            if lay.depthwise:
                out.update({p + "dw2.weight": (c, 1, 3, 3), p + "dw2.bias": (c,)})
            out.update(_affine(p + "norm2", c))
            out.update({**_affine(p + "mlp.fc1", 4 * c, c), **_affine(p + "mlp.fc2", c, 4 * c)})
            out.update({p + "gamma_1": (c,), p + "gamma_2": (c,)})
        if i < len(lay.depths) - 1:
            p = f"layers.{i}.downsample."
            out.update(
                {p + "proj.weight": (2 * c, c, 3, 3), p + "proj.bias": (2 * c,), **_affine(p + "norm", 2 * c)}
            )
    for i in range(len(lay.depths)):
        out.update(_affine(f"norm{i}", e * 2**i))
    return out


def _official_pixel_decoder(lay: OfficialLayout) -> dict[str, Shape]:
    d, channels = lay.hidden, [lay.embed * 2**i for i in range(len(lay.depths))]
    out: dict[str, Shape] = {}
    for k, c in enumerate(channels[:-1], start=1):
        out.update(
            {f"adapter_{k}.weight": (d, c, 1, 1), **_affine(f"adapter_{k}.norm", d)}
        )  # GN: no conv bias
    for k in range(1, len(channels) + 1):
        out.update({f"layer_{k}.weight": (d, d, 3, 3), **_affine(f"layer_{k}.norm", d)})
    out.update({"mask_features.weight": (d, d, 3, 3), "mask_features.bias": (d,)})
    out.update({"input_proj.weight": (d, channels[-1], 1, 1), "input_proj.bias": (d,)})
    for n in range(lay.enc_layers):
        p = f"transformer.encoder.layers.{n}."
        out.update({**_mha(p + "self_attn", d), **_affine(p + "linear1", lay.ffn, d)})
        out.update(
            {**_affine(p + "linear2", d, lay.ffn), **_affine(p + "norm1", d), **_affine(p + "norm2", d)}
        )
    return out


def _official_language(lay: OfficialLayout) -> dict[str, Shape]:
    w, p = lay.text_width, "lang_encoder."
    out = {p + "token_embedding.weight": (lay.vocab, w), p + "positional_embedding": (lay.context, w)}
    for n in range(lay.text_layers):
        b = f"{p}resblocks.{n}."
        out.update({**_mha(b + "attn", w), **_affine(b + "ln_1", w), **_affine(b + "mlp.c_fc", 4 * w, w)})
        out.update({**_affine(b + "mlp.c_proj", w, 4 * w), **_affine(b + "ln_2", w)})
    out.update(_affine(p + "ln_final", w))
    out.update({"lang_proj": (w, lay.proj), "logit_scale": ()})
    return out


def _official_predictor(lay: OfficialLayout) -> dict[str, Shape]:
    d, q = lay.hidden, lay.queries
    out: dict[str, Shape] = {}
    for n in range(lay.dec_layers):
        sa, ca, ff = (f"transformer_{s}_layers.{n}." for s in ("self_attention", "cross_attention", "ffn"))
        out.update({**_mha(sa + "self_attn", d), **_affine(sa + "norm", d)})
        out.update({**_mha(ca + "multihead_attn", d), **_affine(ca + "norm", d)})
        out.update({**_affine(ff + "linear1", lay.ffn, d), **_affine(ff + "linear2", d, lay.ffn)})
        out.update(_affine(ff + "norm", d))
    out.update(_affine("decoder_norm", d))
    out.update({"query_feat.weight": (q, d), "query_embed.weight": (q, d), "level_embed.weight": (3, d)})
    for k in range(3):
        out.update(_affine(f"mask_embed.layers.{k}", d, d))
    out.update({"class_embed": (d, lay.proj), "caping_embed": (d, lay.proj)})
    out["pos_embed_caping.weight"] = (lay.context, d)
    out["self_attn_mask"] = (1, q + lay.context, q + lay.context)
    out.update({"lang_encoder." + k: s for k, s in _official_language(lay).items()})
    return out


def official_key_shapes(layout: str | OfficialLayout = "focal-t") -> dict[str, Shape]:
    """Every key and shape of an official X-Decoder checkpoint (`layout`: "focal-t", "focal-l" or sizes)."""
    lay = OFFICIAL_LAYOUTS[layout] if isinstance(layout, str) else layout
    out = {"backbone." + k: s for k, s in _official_backbone(lay).items()}
    out.update({"sem_seg_head.pixel_decoder." + k: s for k, s in _official_pixel_decoder(lay).items()})
    out.update({"sem_seg_head.predictor." + k: s for k, s in _official_predictor(lay).items()})
    out.update({"backbone_proj": (8 * lay.embed, lay.proj), "criterion.empty_weight": (lay.num_classes + 1,)})
    return out
