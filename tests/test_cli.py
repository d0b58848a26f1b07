"""The command line as a user meets it: --version, -q/-v everywhere, exit codes, validation first."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfseg_fast import __version__, cli
from selfseg_fast.cli import build_parser, main
from selfseg_fast.config import SelfSegConfig
from selfseg_fast.errors import EXIT_INTERNAL, EXIT_USAGE
from selfseg_fast.provenance import package_commit


def test_version_names_the_package_and_its_commit(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"selfseg-fast {__version__} (")
    commit = package_commit()
    assert (commit in out) if commit else ("no git checkout" in out)


def test_every_command_takes_quiet_and_verbose() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == set(cli.COMMAND_MODULES)
    for name, sub in commands.items():
        assert "-q" in sub._option_string_actions and "-v" in sub._option_string_actions, name
    args = parser.parse_args(["-v", "config"])
    assert cli.verbosity_of(args) == 1
    assert cli.verbosity_of(parser.parse_args(["config", "-q"])) == -1


@pytest.fixture()
def no_model_may_load(monkeypatch):
    """Fail the test if a pipeline (and so any model) is built."""
    import selfseg_fast.pipeline as pipeline_module

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was validated")

    monkeypatch.setattr(pipeline_module.SelfSegPipeline, "__init__", refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "caption.cycles=0"], "caption.cycles = 0: must be >= 1"),
        (["--set", "seed=abc"], "seed = 'abc': input should be a valid integer"),
        (["--set", "cluster.align_cost=cosine"], "choose one of 'iou' or 'disagreement'"),
        (["--set", "caption.top_p=2"], "caption.top_p = 2"),
        (["--set", "nouns.min_lenght=3"], "did you mean 'nouns.min_length'?"),
    ],
)
def test_bad_config_fails_before_any_model_loads(no_model_may_load, tmp_path, capsys, flags, message) -> None:
    image = tmp_path / "x.png"
    image.write_bytes(b"not needed: the config fails first")
    assert main(["caption", str(image), "--weights", "random-tiny", *flags]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("selfseg-fast: error: invalid config") or "unknown config key" in err
    assert message in err and len(err.splitlines()) == 1


def test_bad_config_file_fails_before_any_model_loads(no_model_may_load, tmp_path, capsys) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"caption": {"cycles": "three"}}))
    assert main(["caption", "x.jpg", "--config", str(path)]) == EXIT_USAGE
    assert f"{path}: invalid config: caption.cycles = 'three'" in capsys.readouterr().err


def test_config_command_prints_a_config_that_reads_back(no_model_may_load, tmp_path, capsys) -> None:
    out_file = tmp_path / "pinned.json"
    code = main(
        [
            "config",
            "--preset",
            "cityscapes",
            "--set",
            "caption.cycles=3",
            "--seed",
            "5",
            "--out",
            str(out_file),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["caption"]["cycles"] == 3 and printed["seed"] == 5 and printed["preset"] == "cityscapes"
    assert json.loads(out_file.read_text()) == printed
    assert json.loads(json.dumps(SelfSegConfig.from_file(out_file).to_dict())) == printed  # a valid --config
    assert main(["config", "--set", "caption.cycles=0"]) == EXIT_USAGE


def test_unexpected_failure_is_one_line_exit_3_and_a_traceback_with_v(monkeypatch, capsys) -> None:
    import selfseg_fast.commands.config as config_command

    def broken(args):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(config_command, "run", broken)
    assert main(["config"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "selfseg-fast: internal error: RuntimeError: something nobody planned for "
        "(run with -v for the traceback; please report it)"
    ]
    assert main(["config", "-v"]) == EXIT_INTERNAL
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["caption"])  # no image given
    assert info.value.code == EXIT_USAGE


def test_quiet_turns_the_progress_bar_off(monkeypatch) -> None:
    from selfseg_fast import console

    monkeypatch.delenv("SELFSEG_PROGRESS", raising=False)
    console.configure(console.QUIET)
    try:
        assert not console.progress_enabled()
    finally:
        console.configure(console.NORMAL)


def test_hub_retry_lines_stay_out_unless_verbose() -> None:
    """huggingface_hub sets its log level when imported (after configure): the variable must cover it."""
    code = (
        "import logging, sys; from selfseg_fast.console import configure; configure(int(sys.argv[1])); "
        "import huggingface_hub; print(logging.getLogger('huggingface_hub').getEffectiveLevel())"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_VERBOSITY"}
    levels = [
        subprocess.run(
            [sys.executable, "-c", code, str(v)], capture_output=True, text=True, env=env, check=True
        ).stdout.strip()
        for v in (0, 1)
    ]
    assert levels == ["40", "30"]  # ERROR normally, WARNING (retries shown) with -v
