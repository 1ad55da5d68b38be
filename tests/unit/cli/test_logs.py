"""`kinfer logs [PART] [-f]`: the last lines of the local stack's logs, then (``-f``) what is appended, a
restarted part's new log included."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli import logs, main


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from shared.localstack import stack

    monkeypatch.setattr(stack, "state_dir", lambda: tmp_path)
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "gateway.log").write_text("".join(f"gateway line {i}\n" for i in range(1, 31)))
    (folder / "batch_worker.log").write_text("worker up\n")
    return folder


def test_a_part_prints_its_last_lines(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "gateway", "-n", "3"]) == 0
    assert capsys.readouterr().out == "gateway line 28\ngateway line 29\ngateway line 30\n"


def test_every_part_is_printed_with_its_name(log_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "-n", "1"]) == 0
    assert capsys.readouterr().out == "batch_worker | worker up\ngateway | gateway line 30\n"


def test_follow_prints_new_lines_and_reads_a_replaced_log_from_its_start(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = log_dir / "gateway.log"

    def append(text: str) -> None:
        with log.open("a") as handle:
            handle.write(text)

    def restart() -> None:
        log.unlink()
        log.write_text("restarted\n")

    steps = iter([lambda: append("appended, half a li"), lambda: append("ne\n"), restart])

    def tick(seconds: float) -> None:
        step = next(steps, None)
        if step is None:
            raise KeyboardInterrupt
        step()

    monkeypatch.setattr(logs.time, "sleep", tick)
    assert main(["logs", "gateway", "-f", "-n", "1"]) == 130  # Ctrl-C ends it
    assert capsys.readouterr().out == "gateway line 30\nappended, half a line\nrestarted\n"
