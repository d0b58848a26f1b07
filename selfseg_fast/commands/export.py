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

from selfseg_fast.commands.options import add_config_options, add_segmenter_options, config_from_args
from selfseg_fast.errors import SelfSegError


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
    model = build_model(sc.variant, cfg.weights, cfg.seed, sc.checkpoint, sc.official_config)
    path = export_onnx(model, args.onnx, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if not args.no_check:
        diff = check_onnx(model, path)
        print(f"ONNX Runtime vs PyTorch: max abs difference {diff:.2e}")
        if diff > 1e-3:
            raise SelfSegError(
                f"the exported graph disagrees with PyTorch (max abs {diff:.2e})", path=str(path)
            )
    if args.tensorrt:
        from selfseg_export.tensorrt_engine import build_engine

        engine = build_engine(path, args.tensorrt, proj_dim=model.cfg.decoder.proj_dim)
        print(f"wrote {engine} (TensorRT fp16)")
    return 0
