"""``kinfer models``: weights on the command line, and a push that fails deletes what it registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.cli import build_parser
from shared.cli.errors import UsageError
from shared.cli.models import ApiError, parse_weights, push


def test_weights_parse_and_bad_ones_say_the_form() -> None:
    assert parse_weights(["3=90", "4=10"]) == {"3": 90, "4": 10}
    for bad in (["3"], ["=90"], ["3=ninety"], ["3=-1"], ["1:50"]):
        with pytest.raises(UsageError, match="VERSION=PERCENT"):
            parse_weights(bad)


def test_every_lifecycle_command_is_wired() -> None:
    parser = build_parser()
    for argv in (
        ["models", "push", "m.onnx", "--name", "n", "--version", "1", "--alias", "production", "--wait"],
        ["models", "list"],
        ["models", "show", "n", "1"],
        ["models", "promote", "n", "2"],
        ["models", "rollback", "n", "--alias", "staging"],
        ["models", "split", "n", "1=90", "2=10"],
        ["models", "delete", "n", "1"],
        ["agent", "--once"],
    ):
        assert callable(parser.parse_args(argv).func), argv


class FakeApi:
    def __init__(self, upload_error: BaseException | None) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.upload_error = upload_error

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        return {"id": "abc", "state": "awaiting_upload"} if method == "POST" else None

    def upload(self, path: str, file: Path, sha256: str, progress: Any) -> Any:
        self.calls.append(("PUT", path, sha256))
        if self.upload_error:
            raise self.upload_error
        return {"id": "abc", "state": "pending"}


@pytest.mark.parametrize(
    "error", [ApiError("PUT -> 400: not an ONNX model", 400), KeyboardInterrupt(), ConnectionResetError()]
)
def test_a_failed_or_interrupted_upload_deletes_the_version_it_registered(tmp_path: Path, error: BaseException) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"bytes")
    api = FakeApi(error)
    with pytest.raises(type(error)):
        push(api, model, "n", "1", show_progress=False)  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["POST", "PUT", "DELETE"] and api.calls[2][1] == "/v1/models/abc"
    assert api.calls[0][2]["framework"] == "onnx" and api.calls[0][2]["upload"] is True


def test_a_package_defaults_to_the_python_framework(tmp_path: Path) -> None:
    model = tmp_path / "m.tar.gz"
    model.write_bytes(b"\x1f\x8b")
    api = FakeApi(None)
    assert push(api, model, "n", "1", show_progress=False)["state"] == "pending"  # type: ignore[arg-type]
    assert api.calls[0][2]["format"] == "python" and len(api.calls[1][2]) == 64


def test_a_bad_alias_is_refused_before_anything_is_pushed(tmp_path: Path) -> None:
    from shared.cli.models import _push

    model = tmp_path / "m.onnx"
    model.write_bytes(b"bytes")
    api = FakeApi(None)
    args = build_parser().parse_args(
        ["models", "push", str(model), "--name", "n", "--version", "5", "--alias", "9prod"]
    )
    with pytest.raises(UsageError, match="nothing was pushed") as caught:
        _push(api, args)  # type: ignore[arg-type]
    assert caught.value.exit_code == 2 and api.calls == []


def test_pushing_a_version_that_exists_says_what_to_do(tmp_path: Path) -> None:
    # a second run of the README's walk-through on a stack that kept the first run's rows
    from shared.cli.models import _push

    class Exists(FakeApi):
        def call(self, method: str, path: str, body: Any = None) -> Any:
            self.calls.append((method, path, body))
            raise ApiError("model 'linear' version '1' already exists", 409, "conflict", field="version")

    model = tmp_path / "m.onnx"
    model.write_bytes(b"bytes")
    api = Exists(None)
    args = build_parser().parse_args(["models", "push", str(model), "--name", "linear", "--version", "1"])
    with pytest.raises(ApiError) as caught:
        _push(api, args)  # type: ignore[arg-type]
    assert caught.value.lines()[1] == (
        "hint: versions are never overwritten: push another --version (`kinfer models versions linear` lists them), "
        "or delete this one first with `kinfer models delete linear 1`"
    )
    assert [c[0] for c in api.calls] == ["POST"]
