"""Whole-pipeline check: do the fast and reference engines compute the same function on real photos?

    python benchmarks/parity_engines.py [IMAGE ...] --weights random --preset voc

Both engines run on the same images, weights and seed with greedy decoding (sampling draws from
different random streams in the two engines, so their captions are compared in distribution by the
tests, not here). Reported per image: the share of 32x32 cluster-grid patches on which they agree
after one-to-one label matching, and whether the noun sets are identical. With no images given it
uses the two photographs that scikit-learn ships (china.jpg, flower.jpg), which are on disk offline.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from selfseg_fast.config import SelfSegConfig
from selfseg_fast.engines.fast import FastEngine
from selfseg_fast.engines.reference import ReferenceEngine
from selfseg_fast.images import load_image
from selfseg_fast.parity import matched_grid_agreement


def default_images() -> list[str]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().filenames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("images", nargs="*")
    parser.add_argument("--weights", default="random", choices=["pretrained", "random", "random-tiny"])
    parser.add_argument("--preset", default="voc")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images = [load_image(p) for p in (args.images or default_images())]
    cfg = SelfSegConfig.from_preset(args.preset).with_overrides(
        {"weights": args.weights, "seed": args.seed, "caption.do_sample": False, "batch_size": len(images)}
    )
    ref = ReferenceEngine(cfg.with_overrides({"engine": "reference"})).describe(images)
    fast = FastEngine(cfg.with_overrides({"engine": "fast"})).describe(images)
    agreements = []
    print("| image | grid agreement | nouns identical | clusters (ref) | nouns (ref) |")
    print("|---|---|---|---|---|")
    for r, f in zip(ref, fast):
        agree = matched_grid_agreement(np.array(r.cluster_grid), np.array(f.cluster_grid))
        agreements.append(agree)
        print(f"| {r.path.split('/')[-1]} | {100 * agree:.2f} % | {set(r.nouns) == set(f.nouns)} | "
              f"{len(r.captions)} | {len(r.nouns)} |")  # fmt: skip
    print(f"\nmean grid agreement {100 * float(np.mean(agreements)):.2f} % over {len(images)} image(s)")
    return (
        0 if min(agreements) >= 0.99 and all(set(r.nouns) == set(f.nouns) for r, f in zip(ref, fast)) else 1
    )


if __name__ == "__main__":
    sys.exit(main())
