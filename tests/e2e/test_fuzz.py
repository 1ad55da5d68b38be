"""Property-based fuzzing of the live public API (the gateway of `kinfer up`) from its own OpenAPI document.

schemathesis generates requests for every operation of ``GET /openapi.json`` (valid and invalid
bodies, query strings and path parameters) and checks every answer: never a 5xx, a documented
status, the documented content type, and a body matching the documented schema (so every error
body is the shared Error object). Bounded: FUZZ_EXAMPLES examples per operation.

Auth: an admin key with the demo key's scopes (infer, batch, admin) but its own rate limit, made
for the run and revoked after it: the demo key's 600 requests a minute would turn most of the run
into 429s. Models the run registered are deleted afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import checks
from schemathesis.generation import GenerationMode

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

FUZZ_EXAMPLES = int(os.environ.get("KINFER_FUZZ_EXAMPLES", "200"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
STATUSES: Counter[int] = Counter()


def _kinfer(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def fuzz_key(stack: dict[str, str]) -> Iterator[str]:
    out = _kinfer(
        "keys",
        "create",
        "--name",
        f"fuzz-{uuid.uuid4().hex[:8]}",
        "--scopes",
        "infer,batch,admin",
        "--rate-limit",
        "1000000",
    )
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    before = _model_ids()
    yield fields["key"].strip()
    _kinfer("keys", "revoke", fields["id"].strip())
    _delete_models_except(before)
    print(
        f"\nfuzz: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}, "
        f"{sum(n for s, n in STATUSES.items() if s >= 500)} server errors"
    )


def _model_ids() -> set[str]:
    import sqlalchemy as sa

    from shared.services import Services
    from shared.settings import Settings

    services = Services(Settings.from_env())  # the stack's own settings, as `kinfer up` read them
    try:
        with services.db.begin() as conn:
            return {str(i) for i in conn.execute(sa.text("SELECT id FROM models")).scalars()}
    finally:
        services.close()


def _delete_models_except(kept: set[str]) -> None:
    """Delete what the run registered, through the registry (caches invalidated)."""
    from shared.errors import KinferError
    from shared.services import Services
    from shared.settings import Settings

    services = Services(Settings.from_env())
    try:
        left = []
        for model_id in _model_ids() - kept:  # each on its own: one that cannot go must not keep the others
            try:
                model = services.registry.get_model(model_id)
                for alias in services.aliases.list_aliases(model["name"])["aliases"]:  # the run may alias it
                    if model["version"] in alias["versions"]:
                        services.aliases.delete_alias(model["name"], alias["alias"])
                services.registry.delete_model(model_id)
            except KinferError as exc:
                left.append(f"{model_id}: {exc.message}")
        assert not left, f"models the fuzz run registered and could not delete: {left}"
    finally:
        services.close()


def fuzz_operation(operation: Any, mode: GenerationMode, gateway: str, key: str) -> list[str]:
    """Run ``FUZZ_EXAMPLES`` generated requests against one operation; the failures found."""
    failures: list[str] = []
    session = requests.Session()

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
        headers["Authorization"] = f"Bearer {key}"
        try:
            response = case.call(base_url=gateway, headers=headers, session=session, timeout=30)
        except BaseException as exc:  # no answer (a timeout, a reset): a finding, never a hypothesis replay
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(f"{operation.label} [{mode.value}] -> no answer: {type(exc).__name__}: {str(exc)[:400]}")
            return
        STATUSES[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except BaseException as exc:  # schemathesis's failure group: keep going, report them all
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            failures.append(
                f"{operation.label} [{mode.value}] -> {response.status_code}: {str(exc)[:800]}\n"
                f"  reproduce: {case.as_curl_command()}"
            )

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (e.g. GET /health has no parameters)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return failures


# about 60 operations x 2 modes x 200 examples: 4-5 minutes on 2 cores, beyond the 300 s default
@pytest.mark.timeout(900)
def test_every_answer_is_documented_and_never_a_server_error(stack: dict[str, str], fuzz_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{stack['gateway']}/openapi.json")
    schema.config.generation.update(with_security_parameters=False)
    # Registry writes last: a model the run registers has no Triton model behind it, and inference on it
    # is a backend error (502 model_not_loaded), not a property of the request that was fuzzed. KServe v1
    # ``:predict`` lives under /v1/models but is inference: it goes first with the other inference routes.
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: (op.path.startswith("/v1/models") and not op.path.endswith(":predict"), op.label),
    )
    assert len(operations) >= 14, [op.label for op in operations]
    started, failures, took = time.monotonic(), [], {}
    for operation in operations:
        begun = time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += fuzz_operation(operation, mode, stack["gateway"], fuzz_key)
        took[operation.label] = time.monotonic() - begun
    slowest = ", ".join(f"{label} {s:.0f}s" for label, s in sorted(took.items(), key=lambda kv: -kv[1])[:5])
    print(
        f"\nfuzz: {len(operations)} operations x 2 modes x up to {FUZZ_EXAMPLES} examples in "
        f"{time.monotonic() - started:.0f}s (slowest: {slowest})"
    )
    assert not failures, "\n".join(dict.fromkeys(failures))
