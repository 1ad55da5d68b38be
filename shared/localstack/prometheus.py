"""Prometheus for the local stack: the Debian package's ``prometheus`` binary on 127.0.0.1:9090, scraping
every part that serves ``/metrics`` (each function on its own port, the gateway, Triton's metrics port,
the model agent, the event relay and Prometheus itself), with its data under ``.kinfer/prometheus``.
Not scraped: the S3 server (moto behind a signature check: ``/metrics`` there is a request for a bucket
named ``metrics``; the cluster's S3 serves its own metrics) and the scale-to-zero activator (its state is
``GET /status`` on 8092; Triton's own metrics say whether it runs).

The binary is optional: ``scripts/services.sh`` (root) and ``scripts/up`` install the package when it
is missing; without it ``kinfer up`` starts everything else and says so. The configuration is written
fresh on every start from the catalogue, so a new function is scraped without editing anything.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shared import catalogue

PORT = 9090
GATEWAY_PORT = 8080
GATEWAY_SCRAPE_KEY = "demo-token"  # the local stack's dev admin key (shared.localstack.stack.DEMO_KEY)
SCRAPE_INTERVAL_S = 5
RETENTION = "2d"
INSTALL_HINT = "apt-get install -y --no-install-recommends prometheus (as root, or scripts/services.sh)"


def binary() -> str | None:
    """The ``prometheus`` executable on PATH, or None when the package is not installed."""
    return shutil.which("prometheus")


def targets(triton_metrics_port: int, agent_port: int, relay_port: int) -> dict[str, str]:
    """{job name: host:port} of every part that serves ``/metrics``."""
    found = {fn.folder: f"127.0.0.1:{fn.port}" for fn in catalogue.FUNCTIONS}
    found["gateway"] = f"127.0.0.1:{GATEWAY_PORT}"
    found["triton"] = f"127.0.0.1:{triton_metrics_port}"
    found["agent"] = f"127.0.0.1:{agent_port}"
    found["relay"] = f"127.0.0.1:{relay_port}"
    found["prometheus"] = f"127.0.0.1:{PORT}"
    return found


def config(triton_metrics_port: int, agent_port: int, relay_port: int) -> str:
    """prometheus.yml: one job per part (the part's name is its ``job`` label)."""
    lines = [
        "# Written by `kinfer up` (shared/localstack/prometheus.py) on every start; edits are lost.",
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL_S}s",
        f"  evaluation_interval: {SCRAPE_INTERVAL_S}s",
        "scrape_configs:",
    ]
    for job, target in targets(triton_metrics_port, agent_port, relay_port).items():
        lines += [
            f"  - job_name: {job}",
            "    metrics_path: /metrics",
            "    static_configs:",
            f"      - targets: ['{target}']",
        ]
        if job == "gateway":  # the public entry's /metrics asks for an admin key: the local stack's dev key
            lines += ["    authorization:", "      type: Bearer", f"      credentials: {GATEWAY_SCRAPE_KEY}"]
    return "\n".join(lines) + "\n"


def command(executable: str, folder: Path, triton_metrics_port: int, agent_port: int, relay_port: int) -> list[str]:
    """Write the configuration under ``folder`` and answer the command that serves it on 127.0.0.1:9090."""
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(config(triton_metrics_port, agent_port, relay_port))
    return [
        executable,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--storage.tsdb.retention.time={RETENTION}",
        f"--web.listen-address=127.0.0.1:{PORT}",
    ]


def ready_url() -> str:
    return f"http://127.0.0.1:{PORT}/-/ready"
