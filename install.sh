#!/usr/bin/env bash
# Install selfseg-fast and its offline NLP data into the active Python environment.
#   TORCH_SPEC   which torch to install first (default: the CPU wheel torch==2.13.0; on a CUDA
#                machine use e.g. TORCH_SPEC="torch" to get the CUDA build)
#   EXTRAS       pip extras (default: dev = pytest, ruff, triton, positional-encodings)
#   TRANSFORMERS_SPEC  a transformers requirement installed with the package, e.g. "transformers==4.57.*"
#                (default: empty = the newest the package allows, the current 5.x; .ci/run-transformers4)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}
TRANSFORMERS_SPEC=${TRANSFORMERS_SPEC:-}

$PY -m pip install -q "$TORCH_SPEC"
# (resolved together with the package, so the pin and the package's own bounds are checked at once)
$PY -m pip install -q -e ".[${EXTRAS}]" ${TRANSFORMERS_SPEC:+"$TRANSFORMERS_SPEC"}
# crfseg declares torchvision, which does not import beside the CPU torch wheel; it needs only torch.
$PY -m pip install -q --no-deps "crfseg==1.0.0"
# X-Decoder's CLIP tokenizer offline: open_clip_torch ships CLIP's BPE merges file; only that file is
# used (the package is never imported: it needs torchvision), so install it without dependencies.
$PY -m pip install -q --no-deps "open_clip_torch>=2.20"
# The mIoU cross-check runs the official cityscapesscripts evaluation; its declared deps (matplotlib,
# the old `typing` backport) are not needed for that, so install it and its light helpers without them.
if [ "$EXTRAS" != "" ]; then
  $PY -m pip install -q --no-deps cityscapesscripts pyquaternion coloredlogs humanfriendly appdirs
fi

# WordNet for NLTK: Debian/Ubuntu ship it as wordnet-base + wordnet-sense-index (offline-friendly).
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q wordnet-base wordnet-sense-index >/dev/null; } \
    || echo "install.sh: could not apt-get wordnet-base; 'selfseg-fast setup' will try nltk.download" >&2
fi
# Check the spaCy model and build/verify the NLTK WordNet folder (see README "NLP data").
$PY -m selfseg_fast.cli setup
