"""``kinfer models push`` options (``--max-batch-size`` and friends) become the body's ``triton_config``,
checked before anything is pushed; ``promote``/``split --allow-signature-change`` ask the API for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.cli import build_parser
from shared.cli import models as cli
from shared.cli.errors import EXIT_USAGE, UsageError


def args_of(*argv: str) -> Any:
    return build_parser().parse_args(["models", *argv])


def push_args(file: str, *flags: str) -> Any:
    return args_of("push", file, "--name", "n", "--version", "1", *flags)


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        if method == "PUT":
            return {"versions": body.get("versions") or {body["version"]: 100}}
        return {"id": "abc", "state": "awaiting_upload"}

    def upload(self, path: str, file: Path, sha256: str, progress: Any) -> Any:
        return {"id": "abc", "state": "pending"}


def test_the_flags_become_triton_config_and_none_keep_the_defaults() -> None:
    args = push_args("m.onnx", "--max-batch-size", "8", "--no-dynamic-batching", "--instances", "2", "--device", "gpu")
    assert cli.push_options(args) == {"max_batch_size": 8, "dynamic_batching": False, "instances": 2, "device": "gpu"}
    queued = push_args("m.onnx", "--dynamic-batching", "--max-queue-delay-us", "500")
    assert cli.push_options(queued) == {"dynamic_batching": True, "max_queue_delay_us": 500}
    assert cli.push_options(push_args("m.onnx")) is None


@pytest.mark.parametrize(
    "flags,named",
    [
        (("--instances", "0"), "--instances"),
        (("--max-batch-size", "-1"), "--max-batch-size"),
        (("--max-batch-size", "0", "--dynamic-batching"), "--dynamic-batching"),
        (("--no-dynamic-batching", "--max-queue-delay-us", "10"), "--max-queue-delay-us"),
    ],
)
def test_bad_flags_are_usage_errors_naming_the_flag(flags: tuple[str, ...], named: str) -> None:
    with pytest.raises(UsageError) as caught:
        cli.push_options(push_args("m.onnx", *flags))
    assert caught.value.message.startswith(named + ":") and "nothing was pushed" in caught.value.message
    assert caught.value.exit_code == EXIT_USAGE


def test_a_device_other_than_cpu_or_gpu_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit) as caught:
        push_args("m.onnx", "--device", "tpu")
    assert caught.value.code == 2


def test_a_package_takes_no_config_flags() -> None:
    with pytest.raises(UsageError, match="a .tar.gz package brings its own"):
        cli.push_options(push_args("m.tar.gz", "--instances", "2"))


def test_push_sends_triton_config_in_the_registration(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"bytes")
    api = FakeApi()
    cli.push(api, model, "n", "1", triton_config={"max_batch_size": 4}, show_progress=False)  # type: ignore[arg-type]
    assert api.calls[0][0:2] == ("POST", "/v1/models") and api.calls[0][2]["triton_config"] == {"max_batch_size": 4}
    plain = FakeApi()
    cli.push(plain, model, "n", "1", show_progress=False)  # type: ignore[arg-type]
    assert "triton_config" not in plain.calls[0][2]


def test_promote_and_split_ask_for_a_signature_change_only_when_told(capsys: pytest.CaptureFixture) -> None:
    for argv, body in (
        (("promote", "n", "2"), {"version": "2"}),
        (("promote", "n", "2", "--allow-signature-change"), {"version": "2", "allow_signature_change": True}),
        (("split", "n", "1=50", "2=50"), {"versions": {"1": 50, "2": 50}}),
        (
            ("split", "n", "1=50", "2=50", "--allow-signature-change"),
            {"versions": {"1": 50, "2": 50}, "allow_signature_change": True},
        ),
    ):
        api, args = FakeApi(), args_of(*argv)
        (cli._promote if argv[0] == "promote" else cli._split)(api, args)  # type: ignore[arg-type]
        assert api.calls == [("PUT", "/v1/models/by-name/n/aliases/production", body)], argv
