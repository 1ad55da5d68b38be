"""Every `kinfer` command: bad usage exits 2 in the one error format, and the README's CLI reference lists
exactly the commands and options the parser defines (both ways)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from shared.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[3]

# One bad use of every command (a new command must add one): argparse's own errors, and those the command
# finds itself before it sends anything (a bad value, a file that does not exist, a bad id).
BAD_USAGE: dict[str, list[str]] = {
    "up": ["up", "--bogus"],
    "status": ["status", "-o", "xml"],
    "down": ["down", "extra"],
    "logs": ["logs", "nope"],
    "demo": ["demo", "--bogus"],
    "serve": ["serve", "--port", "eighty"],
    "db upgrade": ["db", "upgrade", "--bogus"],
    "config set-context": ["config", "set-context"],
    "config use-context": ["config", "use-context", "nope"],
    "config get-contexts": ["config", "get-contexts", "-o", "xml"],
    "config current-context": ["config", "current-context", "-o", "xml"],
    "config delete-context": ["config", "delete-context"],
    "infer": ["infer", "m", "--data", "[1,"],
    "requests get": ["requests", "get", "r1", "--wait", "-1"],
    "models push": ["models", "push", "nope.onnx", "--name", "n", "--version", "1"],
    "models list": ["models", "list", "--limit", "0"],
    "models show": ["models", "show"],
    "models versions": ["models", "versions"],
    "models aliases": ["models", "aliases"],
    "models promote": ["models", "promote", "n"],
    "models split": ["models", "split", "M", "1:50", "2:50"],
    "models rollback": ["models", "rollback"],
    "models delete": ["models", "delete", "n"],
    "models delete-alias": ["models", "delete-alias", "n"],
    "models shadow": ["models", "shadow", "n", "production", "2", "101"],
    "models shadow-status": ["models", "shadow-status", "n"],
    "models rollout start": ["models", "rollout", "start", "n", "2", "--steps", "10,half"],
    "models rollout status": ["models", "rollout", "status"],
    "models rollout pause": ["models", "rollout", "pause", "n", "--bogus"],
    "models rollout resume": ["models", "rollout", "resume", "-o", "xml"],
    "models rollout abort": ["models", "rollout", "abort"],
    "batch submit": ["batch", "submit", "nope.jsonl", "--model", "m"],
    "batch status": ["batch", "status", "xyz"],
    "batch wait": ["batch", "wait", "3f"],
    "batch list": ["batch", "list", "--limit", "501"],
    "batch cancel": ["batch", "cancel", "not-an-id"],
    "batch results": ["batch", "results", "3f2a", "-o", "x.jsonl", "--out", "y.jsonl"],
    "capture set": ["capture", "set", "m"],
    "capture get": ["capture", "get"],
    "capture list": ["capture", "list", "--bogus"],
    "capture delete": ["capture", "delete"],
    "keys create": ["keys", "create", "--bogus"],
    "keys list": ["keys", "list", "--bogus"],
    "keys show": ["keys", "show"],
    "keys update": ["keys", "update", "k1"],
    "keys revoke": ["keys", "revoke"],
    "keys callback-secret": ["keys", "callback-secret"],
    "keys bootstrap": ["keys", "bootstrap", "--bogus"],
    "usage": ["usage", "--by", "day"],
    "audit": ["audit", "--since", "yesterday"],
    "agent": ["agent", "--port", "x"],
    "deploy upload-models": ["deploy", "upload-models", "--bogus"],
    "completion": ["completion", "fish"],
}
CONNECTION = {"--url", "--key", "--context"}
# The commands that take no -o table|json|yaml, and why; every other command prints data and takes it.
NO_OUTPUT_FORMAT = {
    "up": "a progress log of the stack starting",
    "down": "a progress log of the stack stopping",
    "demo": "a guided tour for people",
    "serve": "a server: its log",
    "agent": "a server: its log",
    "logs": "the parts' log lines, as written",
    "db upgrade": "the migrations' log",
    "deploy upload-models": "a progress log of uploads",
    "completion": "a shell script",
    "batch results": "-o names the JSONL file it writes",
}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, argparse.ArgumentParser]:
    """Every runnable command ("models push", ...) and its parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= leaves(child, (*path, name))
            return found
    return {" ".join(path): parser}


def options(parser: argparse.ArgumentParser) -> tuple[set[str], bool]:
    """The command's option strings (help and the connection group aside) and whether it takes the connection."""
    connection = {
        a.dest for g in parser._action_groups if (g.title or "").startswith("connection") for a in g._group_actions
    }
    found = {
        flag
        for action in parser._actions
        if action.option_strings and action.dest not in connection and action.dest != "help"
        for flag in action.option_strings
    }
    return found, bool(connection)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.localstack import stack
    from tests.conftest import free_port

    for name in ("KINFER_CONTEXT", "KINFER_CONFIG", "KINFER_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", f"http://127.0.0.1:{free_port()}")  # nothing answers: nothing may be sent
    monkeypatch.setenv("KINFER_API_KEY", "kf_test")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stack, "state_dir", lambda: tmp_path / ".kinfer")
    (tmp_path / ".kinfer" / "logs").mkdir(parents=True)
    for part in ("gateway", "infer"):
        (tmp_path / ".kinfer" / "logs" / f"{part}.log").write_text(f"{part} started\n")


def test_the_table_of_bad_usage_covers_every_command() -> None:
    assert set(BAD_USAGE) == set(leaves(build_parser()))


@pytest.mark.parametrize("command", sorted(BAD_USAGE))
def test_bad_usage_exits_2_with_the_error_and_a_hint(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(BAD_USAGE[command])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(r"^error: (usage|config|ambiguous): \S", err, re.M), err
    assert "Traceback" not in err and "unreachable" not in err, err  # nothing was sent


def test_every_command_that_prints_data_takes_the_output_formats() -> None:
    commands = leaves(build_parser())
    assert set(NO_OUTPUT_FORMAT) <= set(commands)
    for command, parser in commands.items():
        formats = next((a.choices for a in parser._actions if "-o" in a.option_strings), None)
        if command in NO_OUTPUT_FORMAT:
            continue
        assert formats is not None and {"table", "json", "yaml"} <= set(formats), f"`kinfer {command}` lacks -o"


def test_an_unknown_log_part_names_the_parts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "nope"]) == 2
    assert "no part named 'nope'; the parts are: gateway, infer" in capsys.readouterr().err


def test_argparse_errors_print_usage_then_the_error_and_where_help_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["models", "list", "--limit", "zero"])
    err = capsys.readouterr().err.splitlines()
    assert done.value.code == 2 and err[0].startswith("usage: kinfer models list")
    assert err[-2:] == [
        "error: usage: argument --limit: 'zero' is not a whole number",
        "hint: `kinfer models list --help` shows the arguments",
    ]


def readme_reference() -> dict[str, tuple[set[str], bool]]:
    """The README's CLI reference table: command -> (options, takes the connection flags)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### CLI reference", 1)[1].split("\n#", 1)[0]
    rows: dict[str, tuple[set[str], bool]] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `kinfer ([^`]*)` \|(.*)\|(.*)\|", line.strip())
        if not match:
            continue
        command = " ".join(w for w in match.group(1).split() if re.fullmatch(r"[a-z][a-z-]*", w))
        flags = {
            f for cell in re.findall(r"`([^`]+)`", match.group(2)) if cell.startswith("-") for f in cell.split("/")
        }
        rows[command] = (flags, match.group(3).strip() == "API")
    return rows


def test_the_readme_cli_reference_matches_the_parser_both_ways() -> None:
    readme, parser = readme_reference(), {c: options(p) for c, p in leaves(build_parser()).items()}
    assert sorted(set(parser) - set(readme)) == [], "commands missing from the README's CLI reference"
    assert sorted(set(readme) - set(parser)) == [], "the README's CLI reference lists commands that do not exist"
    for command, (flags, api) in parser.items():
        documented, documented_api = readme[command]
        assert sorted(flags - documented) == [], f"`kinfer {command}`: options missing from the README"
        assert sorted(documented - flags) == [], f"`kinfer {command}`: the README lists options it does not have"
        assert api == documented_api, f"`kinfer {command}`: the README's API column is wrong"
        assert not api or CONNECTION <= flags | CONNECTION


def test_help_says_what_the_defaults_really_are() -> None:
    commands = leaves(build_parser())
    version = next(a for a in commands["batch submit"]._actions if "--version" in a.option_strings)
    assert version.help and "alias production" in version.help
    epilog = build_parser().epilog or ""
    assert "2 usage" in epilog and "1 failed" in epilog
