"""Triton killed under load: `infer` answers 503 with Retry-After (never a 500 or a hang) while it is
down, and serves again soon after it is back; every request gets exactly one answer."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.localstack.triton import TritonServer
from tests.faults.conftest import Load, assert_unavailable_answers, served

pytestmark = pytest.mark.faults


def test_triton_killed_under_load_then_restarted(
    services: Any, base_settings: Any, fault_triton: TritonServer, tmp_path: Path
) -> None:

    name = f"iris-fault-{uuid.uuid4().hex[:8]}"
    services.registry.create_model(
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": fault_triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    env = {"BREAKER_RESET_TIMEOUT_S": "1", "TRITON_TIMEOUT_S": "2"}
    with served("infer", "run_inference", base_settings, tmp_path, env) as (url, _):
        body = {"model": name, "input": {"data": [5.1, 3.5, 1.4, 0.2]}}

        def send(session: requests.Session) -> requests.Response:
            return session.post(f"{url}/v1/infer", json=body, timeout=10)

        with Load(send, threads=4, limit_s=60) as load:
            assert load.wait_for(lambda a: a.status == 200, timeout=10) is not None
            killed = time.monotonic()
            os.kill(fault_triton.pid or 0, signal.SIGKILL)
            first_503 = load.wait_for(lambda a: a.status == 503, timeout=10, after=killed)
            time.sleep(2)  # let the circuit open and answer from the breaker
            fault_triton.stop()  # reap it and its backend stubs
            restarted = time.monotonic()
            fault_triton.start(timeout=60)
            ready = time.monotonic()
            recovered = load.wait_for(lambda a: a.status == 200, timeout=30, after=ready)
            time.sleep(0.5)
        answers = load.answers
    outage = [a for a in answers if killed <= a.at < ready]
    assert first_503 is not None and recovered is not None, load.counts()
    assert_unavailable_answers(answers)
    assert any(a.status == 503 and a.body.get("code") == "circuit_open" for a in outage), "the circuit never opened"
    assert len(answers) == load.sent, "a request got no answer"
    assert all(a.status in (200, 503) for a in answers)
    counts = load.counts()
    print(
        f"\ntriton kill: {load.sent} requests, {counts[200]} x 200, {counts[503]} x 503 "
        f"({sum(1 for a in outage if a.body and a.body.get('code') == 'circuit_open')} circuit_open), "
        f"0 other; first 503 {first_503:.2f}s after the kill; Triton restart {ready - restarted:.1f}s; "
        f"first 200 {recovered:.2f}s after Triton was ready"
    )


def test_callers_who_prefer_to_wait_ride_through_a_triton_restart(
    services: Any, base_settings: Any, fault_triton: TritonServer, tmp_path: Path
) -> None:
    """Triton down (a cold start, as seen from Kinfer): with ``Prefer: wait=N`` every request is held and
    answered once it is back; without it the caller gets 503 with Retry-After at once; a wait shorter than
    the outage ends in the same 503 when it runs out."""
    import threading

    name = f"iris-wake-{uuid.uuid4().hex[:8]}"
    services.registry.create_model(
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": fault_triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    env = {"BREAKER_RESET_TIMEOUT_S": "30", "TRITON_TIMEOUT_S": "2", "WAIT_MAX_S": "60"}
    with served("infer", "run_inference", base_settings, tmp_path, env) as (url, _):
        body = {"model": name, "input": {"data": [5.1, 3.5, 1.4, 0.2]}}

        def send(prefer: str | None) -> requests.Response:
            headers = {"Prefer": prefer} if prefer else {}
            return requests.post(f"{url}/v1/infer", json=body, headers=headers, timeout=90)

        assert send(None).status_code == 200
        fault_triton.stop()
        down = time.monotonic()
        at_once = send(None)
        assert at_once.status_code == 503 and int(at_once.headers["Retry-After"]) >= 1, at_once.text
        assert time.monotonic() - down < 5, "without the preference nobody is held"
        short = send("wait=1")
        assert short.status_code == 503 and short.headers["Preference-Applied"] == "wait=1", short.text
        answers: list[requests.Response] = []
        waiting = [threading.Thread(target=lambda: answers.append(send("wait=60"))) for _ in range(8)]
        for thread in waiting:
            thread.start()
        time.sleep(3)  # held, not failed, while Triton is down
        assert not answers, [a.status_code for a in answers]
        restarted = time.monotonic()
        fault_triton.start(timeout=60)
        for thread in waiting:
            thread.join(timeout=90)
        served_after = time.monotonic() - restarted
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers if a.status_code != 200]
    assert all(a.json()["prediction"] == "setosa" and a.headers["Preference-Applied"] == "wait=60" for a in answers)
    print(f"\nprefer wait: 8 held callers answered {served_after:.1f}s after Triton's restart began")


def test_a_frozen_triton_opens_its_circuit_and_later_callers_get_503_at_once(
    services: Any, base_settings: Any, fault_triton: TritonServer, tmp_path: Path
) -> None:
    """Triton SIGSTOPped (it accepts connections and never answers): every call waits TRITON_TIMEOUT_S, and
    coalesced callers share one failure, so counting timeouts alone opened the circuit only after about
    BREAKER_FAIL_MAX / PIPELINE timeouts (the probe: never within 20 s at 10 s). A timeout followed by a
    missed readiness check (1 s) opens it at once: later callers get 503 circuit_open without waiting."""
    import redis

    from shared.backends.breaker import state_keys

    name = f"iris-frozen-{uuid.uuid4().hex[:8]}"
    services.registry.create_model(
        {
            "name": name,
            "version": "1",
            "framework": "onnx",
            "format": "onnx",
            "backend_url": fault_triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    timeout_s = 4.0
    env = {"TRITON_TIMEOUT_S": str(timeout_s), "BREAKER_FAIL_MAX": "5", "BREAKER_RESET_TIMEOUT_S": "30"}
    later: list[tuple[int, str | None, float]] = []
    with served("infer", "run_inference", base_settings, tmp_path, env) as (url, _):
        body = {"model": name, "input": {"data": [5.1, 3.5, 1.4, 0.2]}}

        def send(session: requests.Session) -> requests.Response:
            return session.post(f"{url}/v1/infer", json=body, timeout=30)

        with Load(send, threads=4, limit_s=60) as load:
            assert load.wait_for(lambda a: a.status == 200, timeout=10) is not None
            frozen = time.monotonic()
            os.kill(fault_triton.pid or 0, signal.SIGSTOP)
            try:
                opened = load.wait_for(
                    lambda a: a.status == 503 and a.body.get("code") == "circuit_open", timeout=25, after=frozen
                )
                for _ in range(10):
                    started = time.monotonic()
                    resp = requests.post(f"{url}/v1/infer", json=body, timeout=30)
                    later.append((resp.status_code, resp.json().get("code"), time.monotonic() - started))
            finally:
                os.kill(fault_triton.pid or 0, signal.SIGCONT)
        answers = load.answers
    redis.Redis.from_url(base_settings.redis_url).delete(*state_keys(fault_triton.grpc_url))  # for the next test
    assert opened is not None, f"the circuit never opened: {load.counts()}"
    assert opened < timeout_s + 3.0, f"the circuit opened {opened:.1f}s after Triton froze"
    assert all((status, code) == (503, "circuit_open") for status, code, _ in later), later
    assert max(seconds for *_, seconds in later) < 0.5, later
    assert len(answers) == load.sent and all(a.status in (200, 503, 504) for a in answers), load.counts()
    waited = max(s for *_, s in later)
    print(
        f"\ntriton frozen: circuit open {opened:.2f}s after the freeze (TRITON_TIMEOUT_S={timeout_s:g}); "
        f"10 later callers answered 503 circuit_open in at most {waited * 1000:.0f} ms; {load.counts()}"
    )
