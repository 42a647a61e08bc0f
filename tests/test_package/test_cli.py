"""The `cointeract` command: help, dispatch, and what it says when a command or a dependency is missing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import comfyui_cointeract
from comfyui_cointeract import cli


def cointeract_executable() -> str:
    beside = Path(sys.executable).parent / "cointeract"
    found = str(beside) if beside.exists() else shutil.which("cointeract")
    assert found, "the `cointeract` console script is not installed: run `pip install -e '.[dev]'`"
    return found


def test_console_script_help() -> None:
    proc = subprocess.run([cointeract_executable(), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in cli.COMMANDS:
        assert name in proc.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert comfyui_cointeract.__version__ in capsys.readouterr().out


def test_commands_required_issue_and_extras() -> None:
    assert set(cli.COMMANDS) == {"generate", "batch", "inspect", "train", "prepare", "demo", "evaluate"}
    assert all(cmd.extra in (None, "cli", "train") for cmd in cli.COMMANDS.values())
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Implemented commands print their help; the others say where their work is tracked. Nothing crashes.
    try:
        code = cli.main([name, "--help"])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    if code == cli.EXIT_UNAVAILABLE:
        assert f"not implemented yet — see issue {cli.COMMANDS[name].issue}" in err
    else:
        assert code == 0, err


def add_command(monkeypatch: pytest.MonkeyPatch, name: str, module: str, function: str = "main") -> None:
    commands = dict(cli.COMMANDS)
    commands[name] = cli.Command(module, function, "test command", "cli", 99)
    monkeypatch.setattr(cli, "COMMANDS", commands)


def test_not_implemented_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    add_command(monkeypatch, "later", "cointeract_core.not_written_yet")
    assert cli.main(["later", "x"]) == cli.EXIT_UNAVAILABLE
    assert "cointeract later: not implemented yet — see issue 99" in capsys.readouterr().err
    add_command(monkeypatch, "later", "cointeract_core", "not_written_yet")  # module there, function not yet
    assert cli.main(["later"]) == cli.EXIT_UNAVAILABLE


@pytest.fixture
def probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module `comfyui_cointeract._cli_probe` (from tmp_path) whose commands echo or need a missing package."""
    (tmp_path / "_cli_probe.py").write_text(
        "def echo(argv):\n    print('argv=' + ' '.join(argv))\n    return 5\n"
        "def lazy(argv):\n    import cointeract_missing_dependency_probe\n"
    )
    (tmp_path / "_cli_probe_eager.py").write_text("import cointeract_missing_dependency_probe\n")
    monkeypatch.setattr(comfyui_cointeract, "__path__", [*comfyui_cointeract.__path__, str(tmp_path)])
    for mod in ("comfyui_cointeract._cli_probe", "comfyui_cointeract._cli_probe_eager"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    return "_cli_probe"


def test_dispatch_passes_argv_and_exit_code(
    probe_module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    add_command(monkeypatch, "echo", probe_module, "echo")
    assert cli.main(["-v", "echo", "a", "--help", "-v"]) == 5
    assert "argv=a --help -v" in capsys.readouterr().out


@pytest.mark.parametrize("module,function", [("_cli_probe", "lazy"), ("_cli_probe_eager", "main")])
def test_missing_dependency_names_the_extra(
    probe_module: str, module: str, function: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    add_command(monkeypatch, "needy", module, function)
    assert cli.main(["needy"]) == cli.EXIT_MISSING_DEPENDENCY
    err = capsys.readouterr().err
    assert "cointeract_missing_dependency_probe" in err
    assert "pip install 'comfyui-cointeract[cli]'" in err
