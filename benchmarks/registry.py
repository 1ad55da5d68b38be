"""Registry benchmark: GET /v1/models/{id} over HTTP, cached and uncached, against a direct
PostgreSQL primary-key query timed in the same run.

    .venv/bin/python benchmarks/registry.py [--n 500]

It serves the models function with `kinfer serve` (uvicorn) on a free port,
against DATABASE_URL / REDIS_URL (defaults: the local stack's), and prints p50/p99 and
ratios. Targets on a 2-core machine: cached p50 <= 2 ms, uncached p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import KeepAlive, print_table, summarize, timed  # noqa: E402
from shared.clients import db
from shared.clients.schema import models  # noqa: E402
from shared.services import Services  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.integration.servers import serve_function  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="models to create and fetch")
    args = parser.parse_args()
    settings = Settings.from_env(auth_required=False)
    db.ensure_database(settings)
    db.upgrade(settings)
    services = Services(settings)
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    ids = [
        services.registry.create_model(
            {
                "name": f"{prefix}-{i}",
                "version": "1",
                "framework": "onnx",
                "format": "onnx",
                "backend_url": "127.0.0.1:8001",
            },
        )["id"]
        for i in range(args.n)
    ]
    try:
        with serve_function("models", "manage_models", free_port(), settings) as base:
            client = KeepAlive(base)
            for _ in range(50):
                client.request("GET", "/health")
            uncached = [timed(lambda i=i: client.request("GET", f"/v1/models/{i}")) for i in ids]
            cached = [timed(lambda i=i: client.request("GET", f"/v1/models/{i}")) for i in ids]
            client.close()
        with services.db.engine.connect() as conn:
            query = sa.select(models).where(models.c.id == sa.bindparam("i"))
            direct = [timed(lambda i=i: conn.execute(query, {"i": uuid.UUID(i)}).first()) for i in ids]
    finally:
        with services.db.begin() as conn:
            conn.execute(sa.delete(models).where(models.c.name.like(f"{prefix}-%")))
        services.close()
    base_stats = summarize(direct)
    rows = [("direct PostgreSQL PK query (baseline)", base_stats, "1.00x")]
    for name, samples in (
        ("GET /v1/models/{id} uncached (HTTP)", uncached),
        ("GET /v1/models/{id} cached (HTTP)", cached),
    ):
        stats = summarize(samples)
        rows.append((name, stats, f"{stats['p50'] / base_stats['p50']:.2f}x p50"))
    print_table(f"Registry GET by id, n={args.n} (targets: cached p50 <= 2 ms, uncached p50 <= 5 ms)", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
