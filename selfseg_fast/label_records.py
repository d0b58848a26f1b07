"""One image's labelling record (what `label` writes and Ray actors send back): built from a
`per_image.ImageOutcome`, with the label PNG (and optional pictures) as bytes. Shared by the local loop
(labelling.py) and the Ray actors (distributed.py), which is why it is a module of its own."""

from __future__ import annotations

import io
from collections.abc import Iterator

from selfseg_fast.label_maps import label_png_bytes, pixel_shares
from selfseg_fast.per_image import ImageOutcome, segment_paths


def outcome_record(outcome: ImageOutcome, pictures: bool = False) -> dict:
    """JSON-ready record of one image (PNG bytes under '*_png' keys), or {'path', 'error'}."""
    if not outcome.ok:
        return {"path": str(outcome.path), "error": outcome.error}
    record = outcome.description.to_json()
    record["names"] = outcome.names
    record["shares"] = pixel_shares(outcome.label_map, outcome.names)
    record.update(outcome.audit)  # "merges" / "taxonomy" when consolidation / a taxonomy is on
    record["label_png"] = label_png_bytes(outcome.label_map, len(outcome.names))
    if pictures:
        from selfseg_fast.visualize import cluster_picture, overlay

        described = outcome.description
        rgb = outcome.image.rgb
        record["overlay_png"] = _png(overlay(rgb, outcome.label_map, outcome.names, record["shares"]))
        record["clusters_png"] = _png(
            cluster_picture(rgb, described.cluster_grid, described.captions, described.cluster_nouns)
        )
    return record


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_records(pipeline, paths: list[str], pictures: bool = False) -> Iterator[tuple[int, dict]]:
    """(index, record) for each path as it finishes (a Ray actor's and the local loop's unit of work)."""
    for index, outcome in enumerate(segment_paths(pipeline, paths)):
        yield index, outcome_record(outcome, pictures)
