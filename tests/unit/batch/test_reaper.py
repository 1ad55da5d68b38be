"""The stall timeout against the retry window the event transport really has (knative/, read by the relay)."""

from __future__ import annotations

from shared.localstack.relay.server import DEFAULT_MANIFESTS
from shared.localstack.relay.wiring import load_wiring
from shared.localstack.stack import available_functions
from shared.settings import Settings
from tests.deploy.support import ROOT

DEFAULT_ATTEMPT_TIMEOUT_S = 60.0  # the relay's per-attempt HTTP timeout when the delivery spec sets none


def worker_delivery():  # noqa: ANN201
    targets = {fn.service: f"http://127.0.0.1:{fn.port}/" for fn in available_functions()}
    wiring = load_wiring(DEFAULT_MANIFESTS, targets)
    (sub,) = [s for s in wiring.subscriptions if s.sink.endswith(":8086/")]  # batch-worker
    return sub.delivery


def test_the_local_relay_outlasts_a_worker_down_for_minutes_before_dead_lettering() -> None:
    """A worker down for 45 s (the issue's case) or a node start must not dead-letter chunks."""
    delivery = worker_delivery()
    assert delivery.dead_letter and delivery.dead_letter.endswith(":8087/")
    assert sum(delivery.schedule()) >= 20 * 60, delivery.schedule()
    assert delivery.schedule()[0] < 45 < sum(delivery.schedule()[:2])  # retried soon after a short outage


def test_a_stalled_job_is_never_one_whose_chunks_are_still_being_retried() -> None:
    delivery = worker_delivery()
    window = sum(delivery.schedule()) + (delivery.retry + 1) * (delivery.timeout_s or DEFAULT_ATTEMPT_TIMEOUT_S)
    configured = (ROOT / "knative" / "base" / "kustomization.yaml").read_text()
    assert "BATCH_STALL_TIMEOUT_S=3600" in configured
    assert Settings.from_env(environ={}).batch_stall_timeout_s == 3600 > window, window
