"""Agent pieces without services: Triton's load errors become short reasons, config version policies,
heartbeat lookups and the agent's own status endpoint."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from shared.endpoints import backend_id
from shared.lifecycle import replicas, tritonconfig
from shared.lifecycle.agent import serve_status
from shared.lifecycle.tritonapi import _reason
from tests.lifecycle_support import PY_CONFIG


def test_triton_load_errors_become_one_line_reasons() -> None:
    body = json.dumps(
        {
            "error": "load failed for model 'lin': version 3 is at UNAVAILABLE state: Internal: "
            "RuntimeError: broken on purpose\n\nAt:\n  /tmp/x/model.py(10): initialize\n;\n"
        }
    )
    assert _reason(body) == "Internal: RuntimeError: broken on purpose"
    assert _reason("not json at all") == "not json at all"
    assert _reason("") == "Triton gave no reason"


def test_the_agent_writes_the_versions_to_load_into_the_config() -> None:
    base = tritonconfig.normalise(PY_CONFIG, "lin")
    assert 'name: "lin"' in base and "version_policy" not in base
    text = tritonconfig.with_versions(base, [3, 1])
    assert list(tritonconfig.parse(text).version_policy.specific.versions) == [1, 3]
    assert "version_policy" not in tritonconfig.normalise(text, "lin"), "pushed configs never carry a policy"


def test_heartbeat_lookups() -> None:
    beat = {"loaded": {"lin": [1, 2]}}
    assert replicas.has(beat, "lin", 2) and not replicas.has(beat, "lin", 3) and replicas.has(beat, "lin", None)
    assert not replicas.has(beat, "other", None)
    assert backend_id("grpc://Triton.Kinfer:80/") == "triton.kinfer:80"


def test_the_agents_status_endpoint_answers_its_probes() -> None:
    """/livez never touches anything; /ready is 503 until the first full sync, then 200 while Triton answers."""

    class FakeAgent:
        synced, last_error, replica = False, "not yet", "r1"

        class triton:  # noqa: N801 - stands in for the Triton API object
            @staticmethod
            def live() -> bool:
                return True

        @staticmethod
        def status() -> dict:
            loaded = {"lin": [1, 2], "other": [3]}
            return {"synced": FakeAgent.synced, "triton": "up", "loaded": loaded, "failed": {"bad/1": "why"}}

    server = serve_status(FakeAgent(), 0, host="127.0.0.1")  # type: ignore[arg-type]
    base = f"http://127.0.0.1:{server.server_port}"

    def get(path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        assert get("/livez") == (200, {"status": "alive"})
        assert get("/ready")[0] == 503
        FakeAgent.synced = True
        assert get("/ready")[0] == 200 and get("/status")[1]["replica"] == "r1"
        assert get("/nope")[0] == 404
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:  # what Prometheus scrapes
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        assert "kinfer_agent_synced 1\n" in text and "kinfer_agent_triton_up 1\n" in text
        assert "kinfer_agent_loaded_versions 3\n" in text and "kinfer_agent_failed_versions 1\n" in text
    finally:
        server.shutdown()


def test_the_agent_takes_only_the_stored_config_pbtxt_from_the_repository(tmp_path: Path, monkeypatch: Any) -> None:
    # a package pushed before packages refused it left config.pbtxt.base beside the checked config.pbtxt;
    # the agent downloads config.pbtxt to that very name, so the smuggled file replaced it
    from shared.lifecycle import agent as agent_module
    from shared.settings import Settings

    stored = tritonconfig.normalise(PY_CONFIG, "lin")
    objects = {
        "lin/config.pbtxt": stored,
        "lin/config.pbtxt.base": stored.replace('backend: "python"', 'backend: "python"\nmax_batch_size: 999'),
        "lin/configs/h100.pbtxt": "smuggled",
        "lin/labels.txt": "a\n",
    }
    monkeypatch.setattr(agent_module.repository, "list_keys", lambda s3, bucket, prefix: dict.fromkeys(objects, 1))
    monkeypatch.setattr(
        agent_module.repository,
        "download",
        lambda s3, bucket, key, path: path.write_text(objects[key], encoding="utf-8"),
    )
    settings = Settings.from_env(environ={"MODEL_REPOSITORY_URI": "s3://repo"})
    agent = agent_module.ModelAgent(None, None, None, None, settings, triton=object(), repository_dir=tmp_path)  # type: ignore[arg-type]
    assert agent._fetch_model_files("lin") == stored
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "lin/config.pbtxt.base",
        "lin/labels.txt",
    ]


def test_the_agent_refuses_a_stored_config_whose_environment_lies_outside_the_model(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from shared.errors import NotFound
    from shared.lifecycle import agent as agent_module
    from shared.settings import Settings

    stored = PY_CONFIG + 'parameters: { key: "EXECUTION_ENV_PATH" value: { string_value: "/srv/other/env.tar.gz" } }\n'
    monkeypatch.setattr(agent_module.repository, "list_keys", lambda s3, bucket, prefix: {"lin/config.pbtxt": 1})
    monkeypatch.setattr(
        agent_module.repository, "download", lambda s3, bucket, key, path: path.write_text(stored, encoding="utf-8")
    )
    settings = Settings.from_env(environ={"MODEL_REPOSITORY_URI": "s3://repo"})
    agent = agent_module.ModelAgent(None, None, None, None, settings, triton=object(), repository_dir=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="EXECUTION_ENV_PATH"):
        agent._fetch_model_files("lin")


def test_files_missing_from_the_repository_fail_with_what_to_do_and_no_storage_address(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # the registry's database outlived the storage (another clone's .kinfer/s3): the reason is public, so it says
    # what to do and keeps the bucket and key for the log
    from shared.errors import NotFound
    from shared.lifecycle import agent as agent_module
    from shared.settings import Settings

    monkeypatch.setattr(agent_module.repository, "list_keys", lambda s3, bucket, prefix: {})
    monkeypatch.setattr(agent_module.repository, "mirror", lambda s3, bucket, prefix, target: 0)
    settings = Settings.from_env(environ={"MODEL_REPOSITORY_URI": "s3://repo"})
    agent = agent_module.ModelAgent(None, None, None, None, settings, triton=object(), repository_dir=tmp_path)  # type: ignore[arg-type]
    for fetch in (lambda: agent._fetch_model_files("lin"), lambda: agent._fetch_version("lin", 3)):
        with pytest.raises(NotFound) as caught:
            fetch()
        assert "s3://" not in caught.value.message and "repo" not in caught.value.message.replace("repository", "")
        assert caught.value.message.endswith("delete this version and push it again")
