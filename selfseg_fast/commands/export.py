"""`selfseg-fast export xdecoder --onnx FILE [--variant focal-t|focal-l|tiny] [--checkpoint PATH]
[--tensorrt ENGINE]`: export X-Decoder's image branch.

Writes the ONNX graph (backbone, pixel decoder, decoder; text embeddings as an input; dynamic batch,
height, width and class count), then runs it in ONNX Runtime against PyTorch on a few shapes and
prints the max abs difference. `--tensorrt ENGINE` also builds an fp16 TensorRT engine from it
(needs TensorRT; not exercised on this project's machines). Weights: --weights (pretrained reads the
official checkpoint or --checkpoint); --variant tiny means --weights random-tiny.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator

from tqdm import tqdm

from selfseg_fast.commands.options import add_config_options, add_segmenter_options, config_from_args
from selfseg_fast.console import VERBOSE, verbosity
from selfseg_fast.errors import SelfSegError
from selfseg_fast.progress_hook import progress_bar, report


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the X-Decoder segmenter to ONNX (and TensorRT)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("model", choices=["xdecoder"], help="what to export")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="ONNX file to write")
    parser.add_argument("--tensorrt", metavar="ENGINE", help="also build an fp16 TensorRT engine here")
    parser.add_argument(
        "--variant",
        choices=["focal-t", "focal-l", "tiny"],
        default=None,
        help="model size (default: segmenter.variant; tiny = the random-weight test model)",
    )
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    add_segmenter_options(parser, backend=False)
    add_config_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.variant == "tiny":
        cfg = cfg.with_overrides({"weights": "random-tiny"})
    elif args.variant:
        cfg = cfg.with_overrides({"segmenter.variant": args.variant})
    from selfseg_export.onnx_export import check_onnx, export_onnx
    from selfseg_fast.models.xdecoder.segmenter import build_model

    sc = cfg.segmenter
    steps = 2 + (not args.no_check) + bool(args.tensorrt)
    with progress_bar(total=steps, desc="export", unit="step") as bar:
        report(f"loading X-Decoder ({sc.variant}, {cfg.weights})")
        model = build_model(sc.variant, cfg.weights, cfg.seed, sc.checkpoint, sc.official_config)
        bar.update(1)
        report("exporting to ONNX")
        with _exporter_output_hidden():
            path = export_onnx(model, args.onnx, opset=args.opset)
        bar.update(1)
        tqdm.write(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stdout)
        if not args.no_check:
            report("checking ONNX Runtime against PyTorch")
            diff = check_onnx(model, path)
            bar.update(1)
            tqdm.write(f"ONNX Runtime vs PyTorch: max abs difference {diff:.2e}", file=sys.stdout)
            if diff > 1e-3:
                raise SelfSegError(
                    f"the exported graph disagrees with PyTorch (max abs {diff:.2e})", path=str(path)
                )
        if args.tensorrt:
            from selfseg_export.tensorrt_engine import build_engine

            report("building the TensorRT engine")
            engine = build_engine(path, args.tensorrt, proj_dim=model.cfg.decoder.proj_dim)
            bar.update(1)
            tqdm.write(f"wrote {engine} (TensorRT fp16)", file=sys.stdout)
    return 0


@contextlib.contextmanager
def _exporter_output_hidden() -> Iterator[None]:
    """The torch.onnx exporter prints its steps ('[torch.onnx] Obtain model graph ...') to stdout: keep
    them for -v, where they help to see where an export fails."""
    if verbosity() >= VERBOSE:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
