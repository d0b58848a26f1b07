"""Where an X-Decoder checkpoint file comes from, and whether it is the file it claims to be.

`fetch_checkpoint(source, revision=None)` -> a local path, for any of:
  - a local file (`~` expanded);
  - a released checkpoint's name, with or without `.pt` (`KNOWN_CHECKPOINTS`: xdecoder_focalt_last,
    xdecoder_focalt_best_openseg, xdecoder_focall_last, xdecoder_focall_bestseg), from the authors' hub
    repository `xdecoder/X-Decoder`;
  - `hf://OWNER/REPO/PATH/FILE.pt`, or a huggingface.co `.../resolve/REV/FILE` or `.../blob/REV/FILE` URL.
  Hub files go through `huggingface_hub.hf_hub_download`, so they live in the Hugging Face cache
  (HF_HOME / HF_HUB_CACHE) beside every other model, and HF_HUB_OFFLINE, HF_TOKEN and mirrors
  (HF_ENDPOINT) work as in every HF tool; `SOURCE@REVISION` pins a branch, tag or commit;
  - any other https URL: downloaded once to `cache_root()/checkpoints/<sha256 of the URL>/<file name>`.
    The cache key is the whole URL, never the file name, so a download from one address can never be
    taken for another's (torch.hub keyed by file name: a file named like an official checkpoint,
    downloaded from anywhere, poisoned the official entry). Plain http is refused unless
    SELFSEG_ALLOW_HTTP=1 (a checkpoint is a pickle: whoever can alter it runs code, even with
    `weights_only`'s narrower surface).

Released checkpoints are verified by SHA-256 after download; a mismatch is an error naming both hashes
(a local file with a released name that differs gets a warning only: it may be a user's own re-save).
A verified file is remembered by (path, size, mtime) in `cache_root()/verified_checkpoints.json`, so it is
hashed once, not at every start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from selfseg_fast.errors import WeightsError
from selfseg_fast.hub import hub_reachable, offline_by_env
from selfseg_fast.paths import cache_root

log = logging.getLogger(__name__)

HUB_REPO = "xdecoder/X-Decoder"  # the authors' Hugging Face repository of released checkpoints


@dataclass(frozen=True)
class KnownCheckpoint:
    """A released checkpoint: its file in `HUB_REPO`, its SHA-256 and the official config it goes with."""

    filename: str
    sha256: str | None  # None: not published where we could read it (verification skipped, said so)
    config: str


# SHA-256 as shown on each file's Hugging Face page ("Git LFS Details"), e.g.
# https://huggingface.co/xdecoder/X-Decoder/blob/7951d33ee0a0138d2ec5c9724171bcd0ad12165e/xdecoder_focalt_last.pt
# (they could not be checked against a download here: no network access to the hub).
KNOWN_CHECKPOINTS: dict[str, KnownCheckpoint] = {
    "xdecoder_focalt_last": KnownCheckpoint(
        "xdecoder_focalt_last.pt",
        "9ddc9672a1fb8c0e463b4bc0c0e788739d08899b89c5cb901e581e3bbda6fb6d",
        "focalt_unicl_lang.yaml",
    ),
    "xdecoder_focalt_best_openseg": KnownCheckpoint(
        "xdecoder_focalt_best_openseg.pt",
        "382823e994e41aa7769a4ba5904058dbd08e5a2bf9f8fc9fe6618dd3c73967b5",
        "svlp_focalt_lang.yaml",
    ),
    "xdecoder_focall_last": KnownCheckpoint(
        "xdecoder_focall_last.pt",
        "ac190b8838f78447f6be277235f75cafa48d2dbf75c29f354113b2d9760b19c1",
        "focall_unicl_lang.yaml",
    ),
    "xdecoder_focall_bestseg": KnownCheckpoint(
        "xdecoder_focall_bestseg.pt",
        "3c3d2eb5c5c16c3e24f449db4980ddf130b3853aa8b483dc34dc77761c47cab7",
        "focall_unicl_lang.yaml",
    ),
}
OFFICIAL_CHECKPOINTS: dict[str, str] = {  # name -> the file's page on the hub (shown in messages)
    name: f"https://huggingface.co/{HUB_REPO}/resolve/main/{known.filename}"
    for name, known in KNOWN_CHECKPOINTS.items()
}
DEFAULT_CHECKPOINT = {"focal-t": "xdecoder_focalt_last", "focal-l": "xdecoder_focall_last"}


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None


def known_for(hub: HubFile) -> KnownCheckpoint | None:
    """The released checkpoint a hub file is, if it is one (same repository and file)."""
    if hub.repo_id != HUB_REPO:
        return None
    return next((k for k in KNOWN_CHECKPOINTS.values() if k.filename == hub.filename), None)


def parse_source(source: str, revision: str | None = None) -> Path | HubFile | str:
    """A local Path, a HubFile, or an https URL (str); see the module docstring."""
    text = str(source).strip()
    local = Path(text).expanduser()
    if local.is_file():
        return local
    text, pinned = split_revision(text)
    revision = revision or pinned
    name = text.removesuffix(".pt")
    if name in KNOWN_CHECKPOINTS:
        return HubFile(HUB_REPO, KNOWN_CHECKPOINTS[name].filename, revision)
    if text.startswith("hf://"):
        parts = text.removeprefix("hf://").split("/")
        if len(parts) < 3 or not all(parts):
            raise WeightsError("expected hf://OWNER/REPO/PATH/FILE.pt", path=text)
        return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision)
    url = urlparse(text)
    if url.scheme in ("http", "https"):
        hub = _hub_url(url)
        if hub is not None:
            return HubFile(hub.repo_id, hub.filename, revision or hub.revision)
        if url.scheme == "http" and os.environ.get("SELFSEG_ALLOW_HTTP") != "1":
            raise WeightsError(
                "plain http checkpoint URLs are refused (anyone on the path could swap the file); use https, "
                "or set SELFSEG_ALLOW_HTTP=1 if you really mean it",
                path=text,
            )
        return text
    raise WeightsError(
        "checkpoint file not found; pass a local .pt path, an https URL, hf://OWNER/REPO/FILE.pt or one of: "
        + ", ".join(KNOWN_CHECKPOINTS),
        path=text,
    )


def split_revision(text: str) -> tuple[str, str | None]:
    """`NAME@REV` / `hf://OWNER/REPO/FILE@REV` -> (source, REV); anything else unchanged (a local path or
    URL may contain "@" itself)."""
    base, at, revision = text.rpartition("@")
    if at and revision and (base.removesuffix(".pt") in KNOWN_CHECKPOINTS or base.startswith("hf://")):
        return base, revision
    return text, None


def _hub_url(url) -> HubFile | None:
    """huggingface.co (or the HF_ENDPOINT mirror) .../OWNER/REPO/resolve|blob/REV/PATH -> HubFile."""
    hosts = {"huggingface.co", "hf.co", urlparse(os.environ.get("HF_ENDPOINT", "")).netloc}
    match = re.fullmatch(r"/([^/]+)/([^/]+)/(?:resolve|blob)/([^/]+)/(.+)", url.path)
    if url.netloc not in hosts or match is None:
        return None
    owner, repo, revision, path = match.groups()
    return HubFile(f"{owner}/{repo}", path, revision)


def fetch_checkpoint(
    source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A verified local path for `source` (see the module docstring); one-line WeightsError otherwise."""
    where = parse_source(str(source), revision)
    if isinstance(where, Path):
        known = next((k for k in KNOWN_CHECKPOINTS.values() if k.filename == where.name), None)
        if known is not None and known.sha256:
            verify_sha256(where, known.sha256, strict=False)
        return where
    if isinstance(where, HubFile):
        path = _hub_download(where, cache_dir)
        known = known_for(where)
    else:
        path = _url_download(where, cache_dir)
        known = None
    if known is not None and known.sha256:
        verify_sha256(path, known.sha256, strict=True)
    elif known is not None:
        log.warning("%s: no published SHA-256 to check it against", path)
    return path


def _hub_download(hub: HubFile, cache_dir: str | Path | None) -> Path:
    import huggingface_hub

    label = f"{hub.repo_id}/{hub.filename}" + (f"@{hub.revision}" if hub.revision else "")
    local_only = not hub_reachable()  # offline: the cache at once, not minutes of retries
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                hub.repo_id,
                hub.filename,
                revision=hub.revision,
                cache_dir=str(cache_dir) if cache_dir else None,
                local_files_only=local_only,
            )
        )
    except Exception as exc:
        raise WeightsError(_hub_failure(exc, hub, local_only), path=label) from exc


def _hub_failure(exc: Exception, hub: HubFile, local_only: bool) -> str:
    kind = type(exc).__name__
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or local_only:
        return (
            "not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE=1 or no network); "
            "download it where there is network (huggingface-cli download "
            f"{hub.repo_id} {hub.filename}) or pass the local .pt path"
        )
    if kind in ("GatedRepoError", "RepositoryNotFoundError"):
        return (
            f"repository {hub.repo_id} not found or not accessible (set HF_TOKEN if it is private or gated)"
        )
    if kind == "RevisionNotFoundError":
        return f"revision {hub.revision!r} not found in {hub.repo_id}"
    if kind in ("EntryNotFoundError", "RemoteEntryNotFoundError"):
        return f"{hub.filename} not found in {hub.repo_id}"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    detail = " ".join(str(exc).split())[:200]
    return (
        f"download from {endpoint} failed ({kind}: {detail}); set HF_ENDPOINT for a mirror or pass a "
        "local .pt path"
    )


def url_cache_path(url: str, cache_dir: str | Path | None = None) -> Path:
    """Where an https download is kept: keyed by the SHA-256 of the whole URL."""
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    name = Path(urlparse(url).path).name or "checkpoint.pt"
    return Path(cache_dir or cache_root() / "checkpoints") / key / name


def _url_download(url: str, cache_dir: str | Path | None) -> Path:
    target = url_cache_path(url, cache_dir)
    if target.is_file():
        return target
    if offline_by_env():
        raise WeightsError(
            "not downloaded yet and downloads are off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE); "
            "download it and pass the local path",
            path=url,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import torch.hub

        torch.hub.download_url_to_file(url, str(target), progress=False)  # temp file, then renamed
    except Exception as exc:
        raise WeightsError(
            f"download failed ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
            "download it by hand and pass the local .pt path",
            path=url,
        ) from exc
    return target


# ---- SHA-256 --------------------------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, *, strict: bool) -> bool:
    """True when the file's SHA-256 is `expected` (remembered per path, size and mtime); a mismatch
    raises (strict) or warns."""
    stat = path.stat()
    memo_key = f"{os.path.realpath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_root() / "verified_checkpoints.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo.get(memo_key) == expected:
        return True
    actual = sha256_of(path)
    if actual != expected:
        message = (
            f"SHA-256 {actual} is not the released file's {expected}: corrupt, truncated or not the official "
            "checkpoint"
        )
        if strict:
            raise WeightsError(f"{message}; delete it and download again", path=str(path))
        log.warning("%s: %s", path, message)
        return False
    memo[memo_key] = expected
    try:
        from selfseg_fast.atomic_files import write_json_atomic

        memo_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(memo_path, memo)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass
    return True
