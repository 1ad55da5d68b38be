"""The `kinfer` command line without a server: exit codes, one-line errors, --version, contexts,
completion, input parsing, and how batch failures map to the lines of the input file."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.cli import build_parser, completion, main
from shared.cli.batch import InputFile, scan, summary
from shared.cli.errors import UsageError
from shared.cli.infer import read_input

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def own_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KINFER_URL", "KINFER_API_KEY", "KINFER_CONTEXT", "KINFER_CONFIG", "KINFER_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "kinfer" / "config.toml"


def kinfer(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_version_and_usage_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("kinfer 0.")
    with pytest.raises(SystemExit) as done:
        main(["batch", "submit"])  # --model missing: argparse's usage error
    assert done.value.code == 2
    assert main([]) == 2


def test_a_bad_setting_is_one_line_exit_2_not_a_traceback() -> None:
    done = kinfer("keys", "bootstrap", "--name", "x", env={"REDIS_TIMEOUT_S": "soon", "CACHE_TTL_S": "-1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "REDIS_TIMEOUT_S" in done.stderr and "CACHE_TTL_S" in done.stderr


def test_an_unreachable_api_is_one_line_exit_1_with_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    assert main(["batch", "list", "--url", f"http://localhost:{free_port()}", "--key", "kf_x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: unreachable: cannot reach http://localhost:")
    assert err[1] == "hint: check --url"


def test_an_unexpected_error_is_one_line_unless_debugging(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.cli import config

    def boom(args: argparse.Namespace) -> int:
        raise RuntimeError("kaput")

    monkeypatch.setattr(config, "_use_context", boom)
    assert main(["config", "use-context", "x"]) == 1
    assert (
        capsys.readouterr().err == "error: unexpected: RuntimeError: kaput\nhint: KINFER_DEBUG=1 shows the traceback\n"
    )
    monkeypatch.setenv("KINFER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        main(["config", "use-context", "x"])


def test_contexts_round_trip_and_keys_are_never_printed(own_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "kf_" + "s" * 40
    assert main(["config", "set-context", "prod", "--url", "https://api.example.com", "--key", secret]) == 0
    assert main(["config", "set-context", "local", "--url", "http://localhost:8080"]) == 0
    assert "(current)" not in capsys.readouterr().out.splitlines()[-1]  # the first context stays current
    assert main(["config", "get-contexts"]) == 0
    listing = capsys.readouterr().out
    assert secret not in listing and "kf_sssssss..." in listing
    assert [line.split()[:2] for line in listing.splitlines()[1:]] == [
        ["local", "http://localhost:8080"],
        ["*", "prod"],
    ]
    assert main(["config", "use-context", "local"]) == 0
    capsys.readouterr()
    assert main(["config", "get-contexts", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["current-context"] == "local" and [c["key"] for c in data["contexts"]] == ["-", "kf_sssssss..."]
    assert main(["config", "current-context", "-o", "json"]) == 0
    current = json.loads(capsys.readouterr().out)
    assert current == {
        "context": "local",
        "url": "http://localhost:8080",
        "key": "demo-token",
        "key_from": "local dev key",
    }
    assert main(["config", "get-contexts", "-o", "name"]) == 0
    assert capsys.readouterr().out.split() == ["local", "prod"]
    assert main(["config", "delete-context", "local"]) == 0
    assert main(["config", "use-context", "local"]) == 2
    assert "no context named 'local'" in capsys.readouterr().err
    assert secret in own_config.read_text()  # stored (mode 0600), only never shown


def test_completion_script_completes_commands_options_and_choices(tmp_path: Path) -> None:
    script = tmp_path / "kinfer.bash"
    script.write_text(completion.script(build_parser(), "bash"))

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f'source "{script}"; COMP_WORDS=({line}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); '
            '_kinfer_complete kinfer "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; '
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert done.returncode == 0, done.stderr
        return sorted(filter(None, done.stdout.splitlines()))

    assert complete("kinfer", "b") == ["batch"]
    assert complete("kinfer", "batch", "") == ["cancel", "list", "results", "status", "submit", "wait"]
    assert complete("kinfer", "batch", "submit", "--fail") == ["--fail-on-errors"]
    assert complete("kinfer", "keys", "list", "-o", "") == ["json", "table", "yaml"]
    assert complete("kinfer", "completion", "") == ["bash", "zsh"]
    assert "examples/iris.jsonl" in complete("kinfer", "batch", "submit", "examples/ir")
    assert complete("kinfer", "batch", "status", "") == []
    zsh = completion.script(build_parser(), "zsh")
    assert "bashcompinit" in zsh and "complete -o filenames -F _kinfer_complete kinfer" in zsh


@pytest.mark.parametrize(
    "given, expected",
    [
        ("[5.1, 3.5, 1.4, 0.2]", {"data": [5.1, 3.5, 1.4, 0.2]}),
        ('{"features": [[1, 2, 3, 4]]}', {"features": [[1, 2, 3, 4]]}),
    ],
)
def test_infer_input_is_a_list_or_named_tensors(given: str, expected: dict) -> None:
    assert read_input(argparse.Namespace(data=given, file=None)) == expected


@pytest.mark.parametrize(
    "given, message", [("[5.1, 3.5", "--data is not valid JSON"), ("3", "JSON list"), ("{}", "JSON list")]
)
def test_infer_input_errors_are_usage_errors(given: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        read_input(argparse.Namespace(data=given, file=None))


def test_input_lines_map_items_to_file_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"data": [1]}\n\n{"data": [2]}\n  \n\n{"data": [3\n{"data": [4]}\n')
    found = scan(path, parse=True)
    assert found.items is None and found.bad_line == 6 and found.blank_lines == [2, 4, 5]
    assert [found.line_of(i) for i in range(4)] == [1, 3, 6, 7]
    assert [found.index_of_line(n) for n in (1, 3, 6, 7)] == [0, 1, 2, 3]
    good = tmp_path / "good.jsonl"
    good.write_text('{"data": [1]}\n{"data": [2]}\n')
    assert scan(good, parse=True).items == [{"data": [1]}, {"data": [2]}]


def test_the_summary_names_the_failed_lines_and_how_to_see_every_failure(tmp_path: Path) -> None:
    source = InputFile(tmp_path / "x.jsonl", blank_lines=[2])
    status = {
        "job_id": "j1",
        "status": "completed",
        "total": 14,
        "completed": 14,
        "succeeded": 11,
        "failed": 3,
        "errors": [
            {"index": 1, "error": "the input is not valid JSON"},
            {"index": 4, "error": "input.data has shape [2]; expected ..."},
        ],
    }
    text = summary(status, 2.0, source)
    assert "succeeded 11, failed 3 of 14" in text
    assert "  line 3: the input is not valid JSON" in text and "  line 6: input.data has shape [2]" in text
    assert "kinfer batch results j1 --failed" in text


def test_an_unreachable_database_is_one_line_naming_database_url() -> None:
    from tests.conftest import free_port

    done = kinfer("db", "upgrade", env={"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/kinfer"})
    assert done.returncode == 1 and done.stderr.count("\n") == 2, done.stderr
    assert done.stderr.startswith("error: database: ") and "hint: check DATABASE_URL" in done.stderr


def test_infer_wait_sends_prefer_and_waits_that_much_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cli import api
    from shared.cli import infer as infer_cli

    sent: dict[str, object] = {}

    class Client:
        def call(self, method: str, path: str, body: object = None, **kw: object) -> dict[str, object]:
            sent.update(kw, body=body)
            return {"model": "m", "version": "1", "prediction": 1, "outputs": {}}

    args = build_parser().parse_args(["infer", "m", "--data", "[1, 2]", "--wait", "30", "-o", "json"])
    assert infer_cli.run(Client(), args) == 0  # type: ignore[arg-type]
    assert sent["headers"] == {"Prefer": "wait=30"} and sent["timeout"] == api.TIMEOUT_S + 30
    args = build_parser().parse_args(["infer", "m", "--data", "[1]", "-o", "json"])
    infer_cli.run(Client(), args)  # type: ignore[arg-type]
    assert sent["headers"] is None
    with pytest.raises(UsageError):
        infer_cli.run(Client(), build_parser().parse_args(["infer", "m", "--data", "[1]", "--wait", "-1"]))  # type: ignore[arg-type]
