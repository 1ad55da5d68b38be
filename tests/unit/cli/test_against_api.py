"""`kinfer` commands against a stand-in of the HTTP API (a real local HTTP server answering canned JSON):
models versions/aliases/show tables, the error format, id prefixes, the model check before an upload,
and the summary of a job that had already finished."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from shared.cli import main

Answer = tuple[int, object]
Route = Callable[[dict[str, str]], Answer]
JOB_A = "3f2a1b2c-0000-4000-8000-000000000001"
JOB_B = "3f2a9999-0000-4000-8000-000000000002"
JOB_C = "77aa0000-0000-4000-8000-000000000003"
REASON = "Triton could not load the model: unexpected input shape for features in version two"


def model(version: str, state: str = "ready", reason: str | None = None) -> dict[str, object]:
    return {
        "id": f"id-{version}",
        "name": "lin",
        "version": version,
        "status": "active",
        "state": state,
        "state_reason": reason,
        "triton_model": "lin",
        "triton_version": int(version),
        "created_at": f"2026-12-07T10:0{version}:00+00:00",
        "framework": "onnx",
        "format": "onnx",
    }


ALIASES = [
    {
        "name": "lin",
        "alias": "canary",
        "versions": {"1": 90, "2": 10},
        "previous": {"1": 100},
        "created_at": "2026-12-07T10:05:00+00:00",
        "updated_at": "2026-12-07T10:06:00+00:00",
    },
    {
        "name": "lin",
        "alias": "production",
        "versions": {"1": 100},
        "previous": None,
        "created_at": "2026-12-07T10:05:00+00:00",
        "updated_at": "2026-12-07T10:05:00+00:00",
    },
]


def error(status: int, code: str, message: str, field: str | None = None) -> Answer:
    body = {"error": message, "code": code, "request_id": "req-42"}
    return status, (body | {"field": field} if field else body)


def job(job_id: str, status: str = "completed") -> dict[str, object]:
    return {
        "id": job_id,
        "job_id": job_id,
        "status": status,
        "model": "lin",
        "version": "1",
        "progress": 1.0,
        "total": 1_538_871,
        "completed": 1_538_871,
        "succeeded": 1_538_871,
        "failed": 0,
        "created_at": "2026-12-07T10:00:00+00:00",
        "started_at": "2026-12-07T10:00:01+00:00",
        "finished_at": "2026-12-07T10:02:01+00:00",
        "errors": [],
    }


class FakeApi:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Route] = {
            ("GET", "/v1/models"): lambda q: (
                200,
                {"models": [model("2", "failed", REASON), model("1")] if q.get("name") == "lin" else [], "total": 2},
            ),
            ("GET", "/v1/models/by-name/lin/aliases"): lambda q: (200, {"name": "lin", "aliases": ALIASES}),
            ("GET", "/v1/models/by-name/nope/aliases"): lambda q: (200, {"name": "nope", "aliases": []}),
            ("GET", "/v1/models/by-name/lin/1"): lambda q: (200, model("1")),
            ("GET", "/v1/models/id-1/status"): lambda q: (
                200,
                {
                    "backends": {
                        "127.0.0.1:8001": {"live": 1, "loaded": 1, "replicas": [{"replica": "r1", "loaded": 1}]}
                    }
                },
            ),
            ("DELETE", "/v1/models/id-1"): lambda q: error(
                409, "version_aliased", "model 'lin' version '1' is served through alias 'canary'"
            ),
            ("GET", "/v1/batch"): lambda q: (
                200,
                {"jobs": [job(JOB_A), job(JOB_B), job(JOB_C)] if q.get("offset") == "0" else [], "total": 3},
            ),
            ("GET", f"/v1/batch/{JOB_A}"): lambda q: (200, job(JOB_A)),
            ("GET", f"/v1/batch/{JOB_C}"): lambda q: (200, job(JOB_C)),
            ("POST", "/v1/infer"): lambda q: error(400, "invalid_input", "input.data has shape [2]", "input.data"),
        }
        self.seen: list[tuple[str, str]] = []


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    fake = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            fake.seen.append((self.command, parts.path))
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            route = fake.routes.get((self.command, urllib.parse.unquote(parts.path)))
            query = dict(urllib.parse.parse_qsl(parts.query))
            status, body = route(query) if route else error(404, "not_found", f"{parts.path} not found")
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("X-Request-ID", f"req-{len(fake.seen)}")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("KINFER_CONTEXT", "KINFER_CONFIG", "KINFER_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("KINFER_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("KINFER_API_KEY", "kf_test")
    yield fake
    server.shutdown()
    server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_versions_show_state_and_the_aliases_that_point_at_each(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "models", "versions", "lin")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["VERSION", "STATE", "STATUS", "TRITON", "CREATED", "ALIASES", "REASON"]
    assert lines[1].split()[:3] == ["2", "failed", "active"] and "canary (10%)" in lines[1]
    assert "canary (90%),production" in lines[2] and "2026-12-07 10:01:00Z" in lines[2]
    # REASON is shortened after a whole word, never inside one
    reason = lines[1][lines[0].index("REASON") :]
    assert reason.endswith("...") and REASON.startswith(reason.removesuffix("..."))
    assert REASON[len(reason) - 3] == " ", reason
    code, out, _ = run(capsys, "models", "versions", "lin", "-o", "json")
    assert [v["aliases"] for v in json.loads(out)["versions"]] == [["canary (10%)"], ["canary (90%)", "production"]]


def test_aliases_list_target_split_sticky_and_updated(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "models", "aliases", "lin")
    assert code == 0 and out.splitlines() == [
        "ALIAS       TARGET        STICKY           PREVIOUS  UPDATED",
        "canary      1=90%, 2=10%  per X-Route-Key  1         2026-12-07 10:06:00Z",
        "production  1             -                -         2026-12-07 10:05:00Z",
    ]
    code, out, _ = run(capsys, "models", "aliases", "lin", "-o", "yaml")
    assert yaml.safe_load(out) == {"name": "lin", "aliases": ALIASES}
    code, _, err = run(capsys, "models", "aliases", "nope")
    assert code == 1 and err.startswith("error: not_found: model 'nope' not found (HTTP 404, request id req-")


def test_delete_alias_sends_the_delete(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    api.routes[("DELETE", "/v1/models/by-name/lin/aliases/canary")] = lambda q: (204, None)
    code, out, _ = run(capsys, "models", "delete-alias", "lin", "canary")
    assert code == 0 and out == "deleted alias canary of lin\n"
    assert ("DELETE", "/v1/models/by-name/lin/aliases/canary") in api.seen


def test_show_honours_table_json_and_yaml(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "models", "show", "lin", "1")
    assert code == 0 and not out.lstrip().startswith("{")
    assert "state:" in out and "BACKEND" in out and "r1" in out and "loaded" in out
    code, out, _ = run(capsys, "models", "show", "lin", "1", "-o", "json")
    assert json.loads(out)["backends"]["127.0.0.1:8001"]["live"] == 1
    code, out, _ = run(capsys, "models", "show", "lin", "1", "-o", "yaml")
    assert yaml.safe_load(out)["version"] == "1"
    code, out, _ = run(capsys, "models", "show", "lin")
    assert "alias canary -> 1=90%, 2=10% (before: 1)" in out


def test_errors_carry_code_field_status_request_id_and_a_hint(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "models", "delete", "lin", "1")
    lines = err.splitlines()
    assert code == 1 and lines[0] == (
        "error: version_aliased: model 'lin' version '1' is served through alias 'canary' (HTTP 409, request id req-42)"
    )
    assert lines[1].startswith("hint: `kinfer models aliases lin` lists them") and "delete-alias lin" in lines[1]
    code, _, err = run(capsys, "infer", "lin", "--data", "[1, 2]")
    assert code == 1 and err == (
        "error: invalid_input: input.data has shape [2] (field input.data, HTTP 400, request id req-42)\n"
    )


def test_a_unique_prefix_names_the_job_an_ambiguous_one_lists_them(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "batch", "status", "77aa", "-o", "json")
    assert code == 0 and json.loads(out)["job_id"] == JOB_C
    code, _, err = run(capsys, "batch", "status", "3F2A")
    assert code == 2 and err.startswith("error: ambiguous: '3f2a' is the prefix of 2 jobs: ")
    assert JOB_A in err and JOB_B in err and "hint: give more of the id" in err
    code, _, err = run(capsys, "batch", "status", "3f2a1")
    assert code == 0, err
    code, _, err = run(capsys, "batch", "status", "abcd")
    assert code == 1 and "none of your batch jobs has an id starting with 'abcd'" in err
    assert ("GET", "/v1/batch/abcd") not in api.seen


def test_submit_checks_the_model_before_it_uploads(api: FakeApi, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"data": [1]}\n')
    api.routes[("GET", "/v1/models/by-name/lin/aliases/staging")] = lambda q: error(
        404, "alias_not_found", "model 'lin' has no alias 'staging'"
    )
    api.routes[("GET", "/v1/models/by-name/lin/7")] = lambda q: error(
        404, "version_not_found", "model 'lin' has no version '7' (versions: 1 active, 2 failed)"
    )
    for model, extra, first in (
        # a server whose /aliases answers an unknown name with 200 []: the list call's request id is named
        ("nope", [], "error: not_found: model 'nope' not found (HTTP 404, request id req-"),
        ("lin", ["--version", "7"], "error: version_not_found: model 'lin' has no version '7' (versions: 1 active, "),
        ("lin", ["--version", "staging"], "error: alias_not_found: model 'lin' has no alias 'staging' (HTTP 404, "),
    ):
        code, _, err = run(capsys, "batch", "submit", str(inputs), "--model", model, "--upload", *extra)
        assert code == 1 and err.startswith(first) and "request id req-" in err.splitlines()[0], err
        assert err.splitlines()[1].startswith("hint: nothing was uploaded; `kinfer models "), err
    assert not [p for m, p in api.seen if m in ("POST", "PUT")]


def test_the_apis_own_not_found_reaches_the_user_whole(
    api: FakeApi, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    unknown = error(404, "model_not_found", "model 'lni' not found; did you mean 'lin'?")
    api.routes[("GET", "/v1/models/by-name/lni/aliases")] = lambda q: unknown
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"data": [1]}\n')
    for argv in (
        ["batch", "submit", str(inputs), "--model", "lni"],
        ["models", "versions", "lni"],
        ["models", "aliases", "lni"],
        ["models", "show", "lni"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 1 and err.splitlines()[0] == (
            "error: model_not_found: model 'lni' not found; did you mean 'lin'? (HTTP 404, request id req-42)"
        ), (argv, err)
    code, _, err = run(capsys, "models", "versions", "nope")  # a server that answers 200 [] for an unknown name
    assert code == 1 and re.match(r"error: not_found: model 'nope' not found \(HTTP 404, request id req-\d+\)", err)


def test_hints_name_the_model_not_a_placeholder(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    api.routes[("GET", "/v1/models/by-name/lin/2")] = lambda q: error(
        404, "version_not_found", "model 'lin' version '2' not found"
    )
    api.routes[("POST", "/v1/infer")] = lambda q: error(404, "alias_not_found", "model 'lin' has no alias 'blue'")
    code, _, err = run(capsys, "models", "show", "lin", "2")
    assert code == 1 and err.splitlines() == [
        "error: version_not_found: model 'lin' version '2' not found (HTTP 404, request id req-42)",
        "hint: `kinfer models versions lin` lists the model's versions and their state",
    ]
    code, _, err = run(capsys, "infer", "lin", "--version", "blue", "--data", "[1]")
    assert code == 1 and err.splitlines()[1] == "hint: `kinfer models aliases lin` lists the model's aliases"
    assert "NAME" not in err


def test_show_takes_an_alias_and_shows_each_version_of_a_split(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    for alias in ALIASES:
        api.routes[("GET", f"/v1/models/by-name/lin/aliases/{alias['alias']}")] = lambda q, a=alias: (200, a)
    api.routes[("GET", "/v1/models/by-name/lin/2")] = lambda q: (200, model("2", "ready"))
    api.routes[("GET", "/v1/models/id-2/status")] = lambda q: (200, {"backends": {}})
    code, out, err = run(capsys, "models", "show", "lin", "production")
    assert code == 0 and out.startswith("alias production of lin -> 1\n"), err
    assert "-- version 1 (100% of the traffic)" in out and "r1" in out and "version 2" not in out
    code, out, _ = run(capsys, "models", "show", "lin", "canary", "-o", "json")
    shown = json.loads(out)
    assert shown["alias"]["versions"] == {"1": 90, "2": 10}
    assert [(v["version"], v["weight"]) for v in shown["versions"]] == [("1", 90), ("2", 10)]
    api.routes[("GET", "/v1/models/by-name/lin/aliases/blue")] = lambda q: error(
        404, "alias_not_found", "model 'lin' has no alias 'blue'"
    )
    code, _, err = run(capsys, "models", "show", "lin", "blue")
    assert code == 1 and err.splitlines() == [
        "error: alias_not_found: model 'lin' has no alias 'blue' (HTTP 404, request id req-42)",
        "hint: `kinfer models aliases lin` lists the model's aliases",
    ]


def test_the_python_client_shows_a_version_through_an_alias(api: FakeApi) -> None:
    import os

    from shared.client import ApiError, Client

    for alias in ALIASES:
        api.routes[("GET", f"/v1/models/by-name/lin/aliases/{alias['alias']}")] = lambda q, a=alias: (200, a)
    client = Client(os.environ["KINFER_URL"], "kf_test")
    assert client.models.show("lin", "production")["version"] == "1"
    assert client.models.show("lin", "1")["id"] == "id-1"
    with pytest.raises(ApiError, match=r"split between versions: 1=90%, 2=10%") as caught:
        client.models.show("lin", "canary")
    assert caught.value.code == "alias_split"


def test_commands_that_change_things_print_json_with_o(
    api: FakeApi, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    api.routes[("DELETE", "/v1/models/by-name/lin/aliases/canary")] = lambda q: (204, None)
    api.routes[("DELETE", "/v1/models/id-1")] = lambda q: (204, None)
    api.routes[("POST", "/v1/models")] = lambda q: (201, model("3", "awaiting_upload"))
    api.routes[("PUT", "/v1/models/id-3/artifact")] = lambda q: (200, model("3", "pending"))
    code, out, _ = run(capsys, "models", "delete-alias", "lin", "canary", "-o", "json")
    assert code == 0 and json.loads(out) == {"name": "lin", "alias": "canary", "deleted": True}
    code, out, _ = run(capsys, "models", "delete", "lin", "1", "-o", "yaml")
    assert code == 0 and yaml.safe_load(out) == {"id": "id-1", "name": "lin", "version": "1", "deleted": True}
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    code, out, err = run(capsys, "models", "push", str(onnx), "--name", "lin", "--version", "3", "-o", "json")
    assert code == 0 and json.loads(out)["state"] == "pending" and "lin 3: pending" in err


def test_a_bad_expiry_is_a_usage_error_with_the_apis_reason(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    api.routes[("POST", "/v1/keys")] = lambda q: error(
        400, "invalid_input", "expires_in must be positive", "expires_in"
    )
    code, _, err = run(capsys, "keys", "create", "--name", "k", "--scopes", "infer", "--expires-in", "0s")
    assert code == 2 and err == (
        "error: invalid_input: expires_in must be positive (field expires_in, HTTP 400, request id req-42)\n"
    )


REQ_A = "d55727c7-0000-4000-8000-000000000001"
REQ_B = "d5572000-0000-4000-8000-000000000002"


def test_requests_get_takes_a_unique_prefix(api: FakeApi, capsys: pytest.CaptureFixture) -> None:
    def matches(q: dict[str, str]) -> Answer:
        found = [
            {"id": r, "status": "succeeded", "model": "lin", "version": "1", "created_at": "2026-12-07T10:00:00+00:00"}
            for r in (REQ_A, REQ_B)
            if r.startswith(q["prefix"])
        ]
        return 200, {"prefix": q["prefix"], "requests": found, "more": False}

    api.routes[("GET", "/v1/requests")] = matches
    api.routes[("GET", f"/v1/requests/{REQ_A}")] = lambda q: (200, {"id": REQ_A, "status": "queued"})
    code, out, err = run(capsys, "requests", "get", "D55727C7", "-o", "json")
    assert code == 0 and json.loads(out)["id"] == REQ_A, err
    code, _, err = run(capsys, "requests", "get", "d557")
    assert code == 2 and err.startswith("error: ambiguous: 'd557' is the prefix of 2 requests: ") and REQ_B in err
    code, _, err = run(capsys, "requests", "get", "abcd")
    assert code == 1 and re.match(r"error: not_found: none of your async requests .* request id req-\d+\)", err)
    code, _, err = run(capsys, "requests", "get", "xy")
    assert code == 2 and "is not a request id" in err
    assert ("GET", "/v1/requests/abcd") not in api.seen


def test_waiting_on_a_job_that_had_ended_says_so_with_its_own_times(
    api: FakeApi, capsys: pytest.CaptureFixture
) -> None:
    code, out, _ = run(capsys, "batch", "wait", JOB_A)
    assert code == 0 and f"job {JOB_A}: completed (it had already finished)" in out
    assert "time 120.0s, 12,823.9 items/s, finished 2026-12-07 10:02:01Z" in out
