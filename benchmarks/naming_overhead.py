"""Names per image and segmentation speed with consolidation and a taxonomy (issue 15 items 1, 3).

Describes each image once (BCC nouns), then segments it with those nouns under each naming setting and
reports names per image, merges per image and segment images/s (the describe time is the same for all
settings and left out). With random weights the nouns are random words, so this measures the mechanics
(how many names merge, what the grouping costs), not the quality of the names.

    python benchmarks/naming_overhead.py --weights random-tiny --images 6 --out naming.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from selfseg_fast.evaluation.datasets.synthetic import write_synthetic_cityscapes
from selfseg_fast.images import load_image
from selfseg_fast.pipeline import SelfSegPipeline

SETTINGS = {
    "off (paper)": {},
    "consolidate specific": {"consolidate": "specific"},
    "consolidate general": {"consolidate": "general"},
    "consolidate specific + overlap 0.6": {"consolidate": {"mode": "specific", "overlap_threshold": 0.6}},
    "taxonomy cityscapes": {"taxonomy": "cityscapes"},
    "consolidate specific + taxonomy cityscapes": {"consolidate": "specific", "taxonomy": "cityscapes"},
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", default="random-tiny")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--root", default="/tmp/naming-overhead-data")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    root = write_synthetic_cityscapes(args.root, num_images=args.images, size=(256, 512), seed=0)
    paths = sorted(root.rglob("*_leftImg8bit.png"))[: args.images]
    images = [load_image(p) for p in paths]
    pipe = SelfSegPipeline.from_pretrained(
        "cityscapes", weights=args.weights, device="cpu", caption__cycles=args.cycles
    )
    described = pipe.describe(images)
    nouns = [list(d.nouns)[: pipe.cfg.segmenter.max_names] for d in described]
    pipe.segment(images, nouns)  # warm-up: every noun's text embedding cached, so no setting pays for it
    for options in SETTINGS.values():  # and the WordNet reader and the taxonomy's mapper loaded
        pipe.segment(images[:1], nouns[:1], **options)
    rows = []
    for label, options in SETTINGS.items():
        start = time.perf_counter()
        results = [pipe.segment(im, n, **options) for im, n in zip(images, nouns)]
        seconds = time.perf_counter() - start
        names = [len(r.class_names) if hasattr(r, "class_names") else len(n) for r, n in zip(results, nouns)]
        maps = [r.label_map if hasattr(r, "label_map") else r for r in results]
        present = [len(np.unique(m[m >= 0])) for m in maps]
        merges = [len(r.merges) if hasattr(r, "merges") else 0 for r in results]
        rows.append(
            {
                "setting": label,
                "nouns_per_image": float(np.mean([len(n) for n in nouns])),
                "names_per_image": float(np.mean(names)),
                "names_in_map_per_image": float(np.mean(present)),
                "merges_per_image": float(np.mean(merges)),
                "segment_images_per_second": len(images) / seconds,
            }
        )
        row = rows[-1]
        print(
            f"{label:44s} names/img {row['names_per_image']:7.2f} in map {row['names_in_map_per_image']:5.2f}"
            f"  merges/img {row['merges_per_image']:6.2f}  img/s {row['segment_images_per_second']:6.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {"weights": args.weights, "images": len(images), "cycles": args.cycles, "rows": rows},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
