"""Offline NLP data: lexnames from the man page, WordNet built from Debian's files, the setup command."""

from __future__ import annotations

import sys

import pytest

from selfseg_fast import nlp_data
from selfseg_fast.cli import main


def test_builtin_lexnames_table_matches_man_page():
    if not nlp_data.LEXNAMES_MAN_PAGE.exists():
        pytest.skip("lexnames(5WN) man page not installed")
    assert nlp_data.lexicographer_files_from_man_page() == nlp_data.LEXICOGRAPHER_FILES


def test_lexnames_text_format():
    lines = nlp_data.lexnames_text().splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3"
    assert lines[5] == "05\tnoun.animal\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[44] == "44\tadj.ppl\t3"


def test_wordnet_built_from_debian_reads_with_nltk(tmp_path, monkeypatch):
    if not (nlp_data.DEBIAN_WORDNET_DIR / "data.noun").exists():
        pytest.skip("Debian wordnet-base not installed")
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(tmp_path)])  # NLTK reads only its data path

    corpus = nlp_data.build_wordnet_from_debian(tmp_path)
    wn = WordNetCorpusReader(str(corpus), None)
    assert wn.synsets("dog", pos="n")[0].lexname() == "noun.animal"
    assert wn.morphy("buses", "n") == "bus"


def test_missing_debian_files_name_the_fix(tmp_path):
    with pytest.raises(nlp_data.NLPDataError, match="apt-get install wordnet-base"):
        nlp_data.build_wordnet_from_debian(tmp_path / "out", source=tmp_path)


def test_setup_command_reports_ok(capsys):
    assert main(["setup"]) == 0
    out = capsys.readouterr().out
    assert "spaCy model: ok" in out and "WordNet: ok" in out


def test_missing_spacy_model_names_the_fix():
    with pytest.raises(nlp_data.NLPDataError, match="pip install"):
        nlp_data.spacy_pipeline.__wrapped__("no_such_model_xyz")


def test_setup_reports_optional_packages_without_failing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "crfseg", None)  # as if not installed
    assert main(["setup"]) == 0  # optional pieces never fail setup
    out = capsys.readouterr().out
    assert "crfseg (optional): not installed:" in out and "pip install --no-deps crfseg==1.0.0" in out
    assert "CLIP BPE file (optional):" in out


def test_no_wordnet_anywhere_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setenv("SELFSEG_NLTK_DATA", str(tmp_path / "nltk"))
    monkeypatch.setattr(nlp_data, "DEBIAN_WORDNET_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: False)  # offline
    with pytest.raises(nlp_data.NLPDataError) as info:
        nlp_data.wordnet.__wrapped__()
    message = str(info.value)
    assert "WordNet for NLTK not found" in message and "apt-get install wordnet-base" in message
    assert "\n" not in message


def test_gpu_extra_follows_the_torch_cuda_major(capsys):
    from selfseg_fast.commands.setup import gpu_extra

    assert gpu_extra("13.0")[0] == "gpu-cu13" and gpu_extra("12.8")[0] == "gpu-cu12"
    assert gpu_extra(None)[0] is None and "CPU build" in gpu_extra(None)[1]
    assert gpu_extra("11.8")[0] is None
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the extras setup names are pyproject's
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "cupy-cuda12x" in extras["gpu-cu12"] and "cupy-cuda13x" in extras["gpu-cu13"]
    assert "gpu" not in extras  # no extra that pins one CUDA major for everyone
    assert main(["setup"]) == 0 and "GPU extra (optional):" in capsys.readouterr().out
