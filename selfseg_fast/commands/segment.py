"""`selfseg-fast segment IMAGE... [--classes "car,road,tree"] [--out DIR] [--checkpoint PATH]`.

With `--classes`, X-Decoder segments each image with exactly those names (the supervised-names
baseline). Without, the whole self-guided pipeline runs: BLIP-Cluster-Caption finds the nouns, and
they become the class names. Prints each image's names with their pixel shares; `--out DIR` writes
DIR/<image>_labels.png (palette PNG, value = index into the names, 255 = unlabelled),
DIR/<image>_overlay.png (the picture with the label colours and a legend) and DIR/<image>.json.
A bad image gets one error line; the others still run (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from selfseg_fast.commands.options import (
    add_config_options,
    add_profile_option,
    add_segmenter_options,
    config_from_args,
)
from selfseg_fast.errors import ImageError, SelfSegError
from selfseg_fast.images import iter_image_paths, load_image
from selfseg_fast.label_maps import label_map_uint8, pixel_shares
from selfseg_fast.profiling import maybe_profile, write_stage_table


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment images with given class names, or self-guided (no names)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    parser.add_argument(
        "--classes", metavar="NAMES", help='comma-separated class names, e.g. "car,road,tree"'
    )
    parser.add_argument("--out", metavar="DIR", help="write label PNG, overlay and JSON per image")
    add_profile_option(parser)
    add_segmenter_options(parser)
    add_config_options(parser)
    parser.set_defaults(func=run)


def parse_classes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SelfSegError('--classes: give at least one name, e.g. --classes "car,road,tree"')
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    names = parse_classes(args.classes) if args.classes else None
    from selfseg_fast.pipeline import SelfSegPipeline

    pipeline = SelfSegPipeline(cfg)
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    failures, stage_seconds = 0, []
    with maybe_profile(args.profile):
        for path in iter_image_paths(args.images):
            try:
                image = load_image(path)
            except ImageError as exc:
                failures += 1
                print(f"selfseg-fast: error: {exc}", file=sys.stderr)
                continue
            if names is not None:
                (label_map,) = pipeline.segment([image], [names])
                image_names, captions = names, {}
            else:
                (result,) = pipeline.run([image])
                label_map, image_names = result.label_map, result.class_names
                captions = result.description.captions
                stage_seconds.append(result.description.stage_seconds)
            shares = pixel_shares(label_map, image_names)
            listing = (
                ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items() if s > 0) or "(nothing named)"
            )
            print(f"{path}: {listing}")
            if out_dir:
                write_outputs(out_dir, Path(path).stem, image.rgb, label_map, image_names, shares, captions)
    if args.profile:
        print(write_stage_table(args.profile, stage_seconds), file=sys.stderr)
    return 1 if failures else 0


def palette(n: int) -> np.ndarray:
    """n distinct colours (a fixed golden-ratio hue walk), [n, 3] uint8."""
    import colorsys

    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)] for i in range(n)],
        dtype=np.uint8,
    ).reshape(-1, 3)


def write_outputs(out_dir: Path, stem: str, rgb, label_map, names, shares, captions) -> None:
    """<stem>_labels.png (palette), <stem>_overlay.png (50 % blend + legend), <stem>.json."""
    colours = palette(max(1, len(names)))
    labels = Image.fromarray(label_map_uint8(label_map), mode="P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(colours)] = colours
    labels.putpalette(flat.ravel().tolist())
    labels.save(out_dir / f"{stem}_labels.png")
    colour_map = np.where((label_map >= 0)[..., None], colours[label_map.clip(0)], rgb)
    overlay = Image.fromarray((0.5 * rgb + 0.5 * colour_map).astype(np.uint8))
    present = [(i, n) for i, n in enumerate(names) if shares.get(n, 0) > 0]
    legend_h = 16 * len(present) + 8
    canvas = Image.new("RGB", (overlay.width, overlay.height + legend_h), (255, 255, 255))
    canvas.paste(overlay, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (i, name) in enumerate(present):
        y = overlay.height + 4 + 16 * row
        draw.rectangle([4, y, 16, y + 12], fill=tuple(int(c) for c in colours[i]))
        draw.text((22, y), f"{name} ({100 * shares[name]:.1f}%)", fill=(0, 0, 0))
    canvas.save(out_dir / f"{stem}_overlay.png")
    record = {"names": names, "shares": shares, "captions": {str(k): v for k, v in captions.items()}}
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1))
