"""Every pinned platform version is one its upstream still supports (issue 19: Knative 1.16, Envoy Gateway
v1.2, Strimzi 0.45 and Triton 24.10 were all out of support). The floors below were read from upstream
on 2026-12-07 (tests/fixtures/releases/README.md): raise them, never lower them, when a pin moves.

- Knative supports its two newest minors, about six months each (knative/community RELEASE-SCHEDULE);
  Serving and net-kourier are at the newest tag read, knative-v1.23.0. Eventing is at knative-v1.22.2, the
  newest tag of the eventing snapshot read (it has no 1.23 tag yet), and eventing-kafka-broker at the
  newest 1.22 patch, knative-v1.22.3 (its 1.23 needs eventing 1.23).
- Envoy Gateway's compatibility matrix (site/content/en/news/releases/matrix.md at v1.9.0): v1.8 reached
  end of life on 2026/11/08, v1.9 is supported to 2027/02/14.
- Strimzi supports its newest release; 1.0.0 removed the kafka.strimzi.io/v1beta2 API (the schema checks
  of knative/strimzi run against the 1.2.0 CRDs, test_crd_schemas.py).
- Triton: at least 25.07, for the fixes of NVIDIA security bulletin 5687; 26.07 (server v2.71.0) pinned.
- The in-cluster S3 server: a MinIO-lineage release of at least RELEASE.2025-10-15T17-29-55Z, the first with
  the fix of CVE-2025-62506 (GHSA-jjjj-jwhf-8rgr, minio/minio#21642: a restricted service or STS account
  could mint an unrestricted service account). MinIO published that release as source only and later
  withdrew its images; Silo (docker.io/pgsty/silo), the maintained fork, carries the fix in every release
  (pgsty/silo docs/security/advisories.md), RELEASE.2026-09-16T00-00-00Z pinned.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    TF,
    Doc,
    knative_versions,
    ksvcs,
    render,
    render_with_component,
    variable_default,
)

KNATIVE_FLOORS = {"serving": (1, 23), "kourier": (1, 23), "eventing": (1, 22), "eventing_kafka": (1, 22)}
ENVOY_GATEWAY_FLOOR = (1, 9)
STRIMZI_FLOOR = (1, 2)
TRITON_FLOOR = (25, 7)
S3_SERVER_FLOOR = (2025, 10, 15, 17, 29, 55)  # RELEASE.2025-10-15T17-29-55Z: CVE-2025-62506 fixed
# MinIO and its fork Silo share the RELEASE.<UTC time> tags and the code of CVE-2025-62506's fix.
S3_SERVER_REPOSITORIES = {"docker.io/pgsty/silo", "docker.io/minio/minio", "quay.io/minio/minio"}


def _release(tag: str) -> tuple[int, ...]:
    found = re.fullmatch(r"RELEASE\.(\d{4})-(\d\d)-(\d\d)T(\d\d)-(\d\d)-(\d\d)Z", tag)
    assert found, f"not a MinIO release tag: {tag!r}"
    return tuple(int(g) for g in found.groups())


def _version(text: str) -> tuple[int, ...]:
    found = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:-py3)?", text)
    assert found, f"not a version: {text!r}"
    return tuple(int(g) for g in found.groups() if g is not None)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    found = {name: render(KNATIVE / "overlays" / name) for name in OVERLAYS}
    found["prod+triton-warm"] = render_with_component(tmp_path_factory.mktemp("warm"), "prod", "triton-warm")
    return found


def test_knative_components_are_on_supported_minors() -> None:
    pinned = knative_versions()
    for key, floor in KNATIVE_FLOORS.items():
        assert _version(pinned[key])[:2] >= floor, f"knative_versions.{key} = {pinned[key]} is older than {floor}"


def test_envoy_gateway_is_a_supported_release() -> None:
    version = variable_default(TF / "modules" / "knative", "envoy_gateway_version")
    assert _version(version)[:2] >= ENVOY_GATEWAY_FLOOR, f"Envoy Gateway {version} is past its end of life"


def test_strimzi_is_a_supported_release() -> None:
    version = variable_default(TF / "modules" / "kafka", "strimzi_version")
    assert _version(version)[:2] >= STRIMZI_FLOOR, f"Strimzi {version} is not supported"


def test_triton_has_the_security_fixes(rendered: dict[str, list[Doc]]) -> None:
    for overlay, docs in rendered.items():
        for c in ksvcs(docs)["triton"]["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("nvcr.io/nvidia/tritonserver:"):
                tag = c["image"].split(":", 1)[1]
                assert _version(tag) >= TRITON_FLOOR, f"{overlay}: Triton {tag} lacks the fixes of bulletin 5687"
                break
        else:
            pytest.fail(f"{overlay}: no Triton container")


def test_the_s3_server_has_the_cve_2025_62506_fix() -> None:
    image = variable_default(TF / "modules" / "data", "minio_image")
    found = re.fullmatch(r"(?P<repo>[^:@]+):(?P<tag>[^:@]+)(?:@sha256:[0-9a-f]{64})?", image)
    assert found, f"minio_image {image!r} is not repository:tag[@digest]"
    assert found.group("repo") in S3_SERVER_REPOSITORIES, f"{found.group('repo')}: not a MinIO-lineage server"
    assert _release(found.group("tag")) >= S3_SERVER_FLOOR, f"{image} lacks the fix of CVE-2025-62506"


def test_the_floors_refuse_the_old_pins() -> None:
    assert _version("1.16.0")[:2] < KNATIVE_FLOORS["eventing"]
    assert _version("v1.2.6")[:2] < ENVOY_GATEWAY_FLOOR
    assert _version("0.45.0")[:2] < STRIMZI_FLOOR
    assert _version("24.10-py3") < TRITON_FLOOR
    assert _release("RELEASE.2025-09-07T16-13-09Z") < S3_SERVER_FLOOR  # the last image MinIO published
