"""The local stack's Prometheus: a job for every part that serves /metrics, and `kinfer up` without the
package (it says so and starts the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import catalogue
from shared.localstack import prometheus, stack


def test_the_configuration_scrapes_every_function_the_gateway_triton_the_agent_the_relay_and_itself(
    tmp_path: Path,
) -> None:
    cmd = prometheus.command("/usr/bin/prometheus", tmp_path, 8002, stack.AGENT_PORT, stack.RELAY_PORT)
    assert "--web.listen-address=127.0.0.1:9090" in cmd and f"--storage.tsdb.path={tmp_path / 'data'}" in cmd
    text = (tmp_path / "prometheus.yml").read_text()
    for fn in catalogue.FUNCTIONS:
        assert f"job_name: {fn.folder}\n" in text and f"127.0.0.1:{fn.port}'" in text
    for job, port in (("gateway", 8080), ("triton", 8002), ("agent", 8089), ("relay", 8090), ("prometheus", 9090)):
        assert f"job_name: {job}\n" in text and f"127.0.0.1:{port}'" in text
    gateway_job = text.split("job_name: gateway\n", 1)[1].split("job_name:", 1)[0]
    assert f"credentials: {stack.DEMO_KEY}" in gateway_job, "the gateway's /metrics asks for an admin key"
    assert text.count("credentials:") == 1


def test_without_the_package_up_says_so_and_leaves_prometheus_out(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)
    assert stack._prometheus_available(said.append) is False
    assert "Prometheus is not installed" in said[0] and "apt-get install" in said[0]


def test_a_busy_port_9090_is_said_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: "/usr/bin/prometheus")
    monkeypatch.setattr(stack.procs, "port_open", lambda port: port == 9090)
    assert stack._prometheus_available(said.append) is False and "9090 is in use" in said[0]
