"""A deploy of a new Kinfer image does not roll the Triton Service (issue 19: the model agent beside Triton
used the functions' image, so every new image made a new Triton revision, and a new revision starts a
replica, a GPU, even when Triton is scaled to zero).

The agent has its own image reference at every layer: ``kinfer-agent`` in knative/base (the functions use
``kinfer``), its own ``images`` entry in each overlay, and terraform's ``agent_image`` (the platform module
sets images by patches, never by an ``images`` transformer that would match both). Its image is
``<repository>-agent:<agent version>`` (knative/agent-version.json), and the version moves only when the
agent's own code does: a test hashes the files ``kinfer agent`` imports and asks for a bump when they change.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    PLATFORM,
    ROOT,
    TF,
    Doc,
    copy_overlay,
    ksvcs,
    parse,
    render,
    render_platform,
    typed,
    unquote,
)

FUNCTION_IMAGE = "kinfer"  # the image name every function container uses in knative/base
AGENT_IMAGE = "kinfer-agent"
KAFKA_SAMPLE = {
    "var.kafka_names.chunk_topic": "kinfer.batch.chunks",
    "var.kafka_names.request_topic": "kinfer.batch.requests",
    "var.kafka_names.worker_group": "kinfer-batch-worker",
    "var.kafka_names.intake_group": "kinfer-batch-intake",
    "var.data_namespace": "kinfer-data",
}


def triton_images(docs: list[Doc]) -> dict[str, str]:
    return {c["name"]: c["image"] for c in ksvcs(docs)["triton"]["spec"]["template"]["spec"]["containers"]}


def function_images(docs: list[Doc]) -> set[str]:
    return {
        c["image"]
        for svc in ksvcs(docs).values()
        if svc["metadata"]["labels"].get("app.kubernetes.io/component") == "function"
        for c in svc["spec"]["template"]["spec"]["containers"]
    }


def test_the_triton_service_does_not_use_the_function_image_name() -> None:
    base = [d for d in yaml.safe_load_all((KNATIVE / "base" / "services" / "triton.yaml").read_text()) if d]
    containers = base[0]["spec"]["template"]["spec"]["containers"]
    images = {c["name"]: c["image"] for c in containers}
    assert FUNCTION_IMAGE not in images.values(), f"Triton's containers use the functions' image name: {images}"
    assert images["model-agent"] == AGENT_IMAGE and [c["name"] for c in containers] == ["triton", "model-agent"]
    functions = [
        yaml.safe_load(path.read_text())
        for path in sorted((KNATIVE / "base" / "services").glob("*.yaml"))
        if path.name != "triton.yaml"
    ]
    assert functions and all(
        c["image"] == FUNCTION_IMAGE for svc in functions for c in svc["spec"]["template"]["spec"]["containers"]
    )


def _retag_functions(tag: str) -> Any:
    def edit(kustomization: dict[str, Any]) -> None:
        entries = [e for e in kustomization["images"] if e["name"] == "ghcr.io/kinfer/kinfer"]
        assert len(entries) == 1, "one images entry for the functions' image"
        entries[0]["newTag"] = tag

    return edit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_new_function_image_in_an_overlay_leaves_triton_alone(tmp_path: Path, overlay: str) -> None:
    before = render(KNATIVE / "overlays" / overlay)
    after = render(copy_overlay(tmp_path, overlay, _retag_functions("9.9.9")), "--load-restrictor=LoadRestrictionsNone")
    assert function_images(after) == {"ghcr.io/kinfer/kinfer:9.9.9"}, "the functions take the new image"
    assert ksvcs(after)["triton"] == ksvcs(before)["triton"], f"{overlay}: a function image changed Triton"
    assert triton_images(before)["model-agent"] == f"ghcr.io/kinfer/kinfer-agent:{recorded()['agent_version']}"


def _terraform_values(image: str, agent_image: str) -> dict[str, str]:
    return {"var.image": image, "local.agent_image": agent_image, **KAFKA_SAMPLE}


def test_terraform_sets_the_images_without_touching_triton_on_a_function_deploy(tmp_path: Path) -> None:
    agent = "registry.example.com/kinfer:1.0.0"
    first = render_platform(tmp_path / "a", "prod", _terraform_values("registry.example.com/kinfer:1.0.0", agent))
    second = render_platform(tmp_path / "b", "prod", _terraform_values("registry.example.com/kinfer:1.1.0", agent))
    assert function_images(first) == {"registry.example.com/kinfer:1.0.0"}
    assert function_images(second) == {"registry.example.com/kinfer:1.1.0"}
    assert triton_images(second)["model-agent"] == agent
    assert ksvcs(second)["triton"] == ksvcs(first)["triton"], "a new function image rolled the Triton Service"
    warm = render_platform(
        tmp_path / "c", "prod", _terraform_values("registry.example.com/kinfer:1.1.0", agent), ("triton-warm",)
    )
    assert triton_images(warm)["model-agent"] == agent
    moved = render_platform(tmp_path / "d", "prod", _terraform_values("r.example.com/k:2", "r.example.com/k:2"))
    assert triton_images(moved)["model-agent"] == "r.example.com/k:2", "agent_image moves the agent"


def test_terraform_has_no_image_transformer_and_an_agent_image_of_its_own() -> None:
    overlay = typed(parse(PLATFORM)["data"], "kustomization_overlay")["kinfer"]
    assert not overlay.get("images"), "an images transformer matches the agent too (same name once rendered)"
    root = {unquote(k): v for block in parse(TF)["variable"] for k, v in block.items() if k != "__is_block__"}
    assert unquote(root["agent_image"].get("default")) == "", "empty: derived from image and the agent version"
    call = {unquote(k): v for block in parse(TF)["module"] for k, v in block.items()}["platform"]
    assert call["agent_image"] == "${var.agent_image}"
    docs = (TF.parent / "docs" / "operations.md").read_text()
    assert "agent_image" in docs, "docs/operations.md says when to pin and when to move agent_image"


# -- the agent's version: it moves with the agent's code, and only then --------------------------------
VERSION_FILE = KNATIVE / "agent-version.json"
# What `kinfer agent` runs: the command's entry point and module, the agent, and what Services builds for it.
AGENT_ENTRY = ("shared.cli", "shared.cli.agent", "shared.lifecycle.agent")


def _module_file(root: Path, name: str) -> Path | None:
    path = root.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every ``shared`` module a file imports when it runs (function-level imports included; imports
    under ``if TYPE_CHECKING:`` never run and are left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".")[: len(module.split(".")) - child.level + int(is_package)]
                    base = ".".join([*package, *([base] if base else [])])
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return {name for name in found if name.split(".")[0] == "shared"}


def _on(node: ast.Attribute, name: str) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == name


def _agent_builders(root: Path) -> tuple[ast.ClassDef, dict[str, ast.FunctionDef]]:
    """``Services`` and the builders of what ``kinfer agent`` takes from it (``services.registry`` and the
    rest, and what those are built from: ``self.db``, ...)."""
    cli = ast.parse((root / "shared" / "cli" / "agent.py").read_text())
    wanted = {n.attr for n in ast.walk(cli) if isinstance(n, ast.Attribute) and _on(n, "services")}
    tree = ast.parse((root / "shared" / "services.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Services")
    builders = {f.name: f for f in cls.body if isinstance(f, ast.FunctionDef)}
    used: dict[str, ast.FunctionDef] = {}
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in used or name not in builders:
            continue
        used[name] = builders[name]
        todo += [n.attr for n in ast.walk(builders[name]) if isinstance(n, ast.Attribute) and _on(n, "self")]
    assert {"registry", "replicas", "cache", "s3"} <= set(used), f"the agent's collaborators moved: {sorted(used)}"
    return cls, used


def _services_text(root: Path) -> bytes:
    """shared/services.py as code (``ast.unparse``) without the builders the agent never calls: a new
    domain object elsewhere is no change of the agent."""
    tree = ast.parse((root / "shared" / "services.py").read_text())
    cls, used = _agent_builders(root)
    kept = [n for n in cls.body if not (isinstance(n, ast.FunctionDef) and n.decorator_list) or n.name in used]
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls.name:
            node.body = kept
    return ast.unparse(tree).encode()


def agent_sources(root: Path = ROOT) -> list[Path]:
    """The source files of everything ``kinfer agent`` imports (``shared.services`` itself, but of what it
    builds only what the agent takes from it; the other subcommands' modules ``kinfer`` loads to list
    them are left out)."""
    files: dict[str, Path] = {}
    _, used = _agent_builders(root)
    builds = {m for f in used.values() for m in _runtime_imports(f, "shared.services", False)}
    todo = [*AGENT_ENTRY, "shared.services", *builds]
    while todo:
        name = todo.pop()
        path = _module_file(root, name)
        if path is None or name in files:
            continue
        files[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        if name != "shared.services":  # its other builders import the whole platform
            todo += _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
    return sorted(files.values())


def sources_sha256(files: list[Path], root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix()
        text = _services_text(root) if name == "shared/services.py" else path.read_bytes()
        digest.update(name.encode() + b"\0" + text + b"\0")
    return digest.hexdigest()


def recorded() -> dict[str, str]:
    return dict(json.loads(VERSION_FILE.read_text()))


def test_the_agent_version_moves_when_the_agents_code_does() -> None:
    files = agent_sources()
    names = {p.relative_to(ROOT).as_posix() for p in files}
    assert {"shared/cli/agent.py", "shared/lifecycle/agent.py", "shared/registry/store.py"} <= names
    assert "shared/clients/schema.py" in names and "shared/settings.py" in names, "what the agent reads is covered"
    assert not names & {"shared/batch/worker.py", "shared/inference/dataplane.py"}, "only the agent's code counts"
    record, current = recorded(), sources_sha256(files)
    assert re.fullmatch(r"[0-9]+\.[0-9]+", record["agent_version"]), "agent_version: MAJOR.MINOR (e.g. 1.0)"
    assert record["sources_sha256"] == current, (
        f"the model agent's code changed (it imports {len(files)} files of shared/): bump agent_version in "
        f"{VERSION_FILE.relative_to(ROOT)} (now {record['agent_version']}) and set its sources_sha256 to {current}, "
        "then the kinfer-agent newTag of knative/overlays/*/kustomization.yaml: a new agent version is a new "
        "image tag, so the next deploy rolls Triton with the new agent (scripts/push-images pushes it)"
    )


def committed_record(rev: str = "HEAD") -> dict[str, str] | None:
    """knative/agent-version.json as committed at ``rev`` (None before it was, or outside a git checkout)."""
    git = shutil.which("git")
    if git is None:
        return None
    proc = subprocess.run(
        [git, "show", f"{rev}:{VERSION_FILE.relative_to(ROOT).as_posix()}"], cwd=ROOT, capture_output=True, timeout=30
    )
    return dict(json.loads(proc.stdout)) if proc.returncode == 0 else None


def version_conflict(committed: dict[str, str] | None, record: dict[str, str]) -> str | None:
    """Why ``record`` may not follow ``committed`` (None when it may)."""
    if committed is None:
        return None
    old, new = (tuple(int(x) for x in r["agent_version"].split(".")) for r in (committed, record))
    if new < old:
        return f"agent_version only moves forward ({committed['agent_version']} was committed)"
    if new == old and committed["sources_sha256"] != record["sources_sha256"]:
        return (
            f"agent_version {record['agent_version']} was committed with another sources_sha256: bump agent_version "
            "(one tag, one agent: the registry may already hold the image of the committed code)"
        )
    return None


def test_a_committed_agent_version_keeps_its_hash() -> None:
    """Re-recording the hash under the same version would ship two different agents as one tag: a version
    once committed with a hash keeps it, and new code takes a new version."""
    assert version_conflict(committed_record(), recorded()) is None
    one = {"agent_version": "1.0", "sources_sha256": "a" * 64}
    assert "bump agent_version" in str(version_conflict(one, {**one, "sources_sha256": "b" * 64}))
    assert version_conflict(one, {"agent_version": "1.1", "sources_sha256": "b" * 64}) is None
    assert version_conflict(one, dict(one)) is None
    assert "only moves forward" in str(version_conflict(one, {**one, "agent_version": "0.9"}))


def test_the_hash_follows_the_agents_imports_and_nothing_else(tmp_path: Path) -> None:
    """A copy of shared/: an edit of a module the agent runs changes the hash, an edit elsewhere does not,
    and a new import by the agent brings its module in."""
    shutil.copytree(ROOT / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__"))

    def digest() -> str:
        return sources_sha256(agent_sources(tmp_path), tmp_path)

    assert digest() == sources_sha256(agent_sources())
    before = digest()
    elsewhere = tmp_path / "shared" / "batch" / "worker.py"
    elsewhere.write_text(elsewhere.read_text() + "# an edit the agent never runs\n")
    assert digest() == before
    for module in ("shared/lifecycle/replicas.py", "shared/clients/schema.py", "shared/clients/storage.py"):
        path = tmp_path / module
        original = path.read_text()
        path.write_text(original + "# an edit the agent runs\n")
        assert digest() != before, module
        path.write_text(original)
    services = tmp_path / "shared" / "services.py"
    original = services.read_text()
    services.write_text(
        original.replace(
            "    @cached_property\n",
            "    @cached_property\n    def extra(self) -> int:\n        return 1\n\n    @cached_property\n",
            1,
        )
    )
    assert services.read_text() != original and digest() == before, "a builder the agent never calls"
    replicas = "Replicas(self.cache, self.settings)"
    services.write_text(original.replace(replicas, f"{replicas} if self.settings else None", 1))
    assert services.read_text() != original and digest() != before, "the builder of the agent's replicas"
    services.write_text(original)
    agent = tmp_path / "shared" / "lifecycle" / "agent.py"
    agent.write_text(agent.read_text() + "\n\ndef later() -> None:\n    from shared.batch import worker  # noqa\n")
    assert "shared/batch/worker.py" in {p.relative_to(tmp_path).as_posix() for p in agent_sources(tmp_path)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlays_run_the_agent_of_the_recorded_version(overlay: str) -> None:
    agent = triton_images(render(KNATIVE / "overlays" / overlay))["model-agent"]
    assert agent == f"ghcr.io/kinfer/kinfer-agent:{recorded()['agent_version']}"


def _agent_locals() -> dict[str, str]:
    return next(block for block in parse(PLATFORM)["locals"] if "agent_image" in block)


def _agent_image_as_written(image: str, agent_image: str = "") -> str:
    """``local.agent_image`` read from agent.tf as python-hcl2 parses it, its regex run by Python's ``re``
    (RE2 and ``re`` agree on this one: anchors, lazy and non-capturing groups, classes)."""
    found = _agent_locals()
    assert found["agent_version"] == '${jsondecode(file("${local.knative_dir}/agent-version.json")).agent_version}'
    assert found["agent_image"] == (
        '${var.agent_image != "" ? var.agent_image : "${local.image_repository}-agent:${local.agent_version}"}'
    )
    match = re.fullmatch(r'\$\{regex\("(.+)", var\.image\)\[0\]\}', found["image_repository"])
    assert match, found["image_repository"]
    repository = re.match(match.group(1), image)
    assert repository, f"agent.tf's regex does not match {image}"
    return agent_image or f"{repository.group(1)}-agent:{recorded()['agent_version']}"


def _agent_image_by_terraform(tmp: Path, image: str, agent_image: str = "") -> str | None:
    """``local.agent_image`` of the platform module, evaluated by ``terraform console`` over its agent.tf
    (None without the terraform CLI: the test then has the python-hcl2 reading alone)."""
    terraform = shutil.which("terraform")
    if terraform is None:
        return None
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLATFORM / "agent.tf", tmp / "agent.tf")
    (tmp / "inputs.tf").write_text(
        'variable "image" { type = string }\nvariable "agent_image" { type = string }\n'
        f'locals {{ knative_dir = "{KNATIVE}" }}\n'
    )
    proc = subprocess.run(
        [terraform, "console", f"-var=image={image}", f"-var=agent_image={agent_image}"],
        input="local.agent_image\n",
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout.strip()))


def _agent_image(tmp: Path, image: str, agent_image: str = "") -> str:
    written = _agent_image_as_written(image, agent_image)
    evaluated = _agent_image_by_terraform(tmp, image, agent_image)
    assert evaluated in (None, written), f"terraform says {evaluated}, the reading of agent.tf {written}"
    return written


def test_terraform_derives_the_agent_image_from_the_agent_version_not_the_image(tmp_path: Path) -> None:
    version = recorded()["agent_version"]
    digest = "sha256:" + "a" * 64
    cases = {
        "registry.example.com/kinfer:0.1.0": f"registry.example.com/kinfer-agent:{version}",
        "registry.example.com/kinfer:0.2.0": f"registry.example.com/kinfer-agent:{version}",
        f"registry.example.com:5000/kinfer:0.2.0@{digest}": f"registry.example.com:5000/kinfer-agent:{version}",
        f"ghcr.io/acme/kinfer@{digest}": f"ghcr.io/acme/kinfer-agent:{version}",
    }
    for i, (image, agent) in enumerate(cases.items()):
        assert _agent_image(tmp_path / str(i), image) == agent, image
    pinned = _agent_image(tmp_path / "pinned", "r.example.com/kinfer:2", "r.example.com/kinfer:1")
    assert pinned == "r.example.com/kinfer:1", "agent_image, when given, wins"
    values = [_terraform_values(image, agent) for image, agent in list(cases.items())[:2]]
    first, second = (render_platform(tmp_path / f"r{i}", "prod", v) for i, v in enumerate(values))
    assert ksvcs(second)["triton"] == ksvcs(first)["triton"], "a release with the same agent rolled Triton"


def test_the_build_pushes_the_agent_image_once_per_agent_version(tmp_path: Path) -> None:
    """scripts/push-images with a recording stand-in for docker: the functions' image every time, the agent's
    under its version and only when the registry lacks it; the README and docs/operations.md use it."""
    log, known = tmp_path / "docker.log", tmp_path / "registry"
    known.mkdir()
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'if [ "$1" = manifest ]; then test -e "{known}/$(echo "$3" | tr / _)"; exit $?; fi\n'
        f'if [ "$1" = push ]; then touch "{known}/$(echo "$2" | tr / _)"; fi\n'
    )
    fake.chmod(0o755)

    def push(tag: str) -> list[str]:
        log.write_text("")
        proc = subprocess.run(
            [str(ROOT / "scripts" / "push-images"), "registry.example.com/kinfer", tag],
            env={"PATH": "/usr/bin:/bin", "DOCKER": str(fake)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return log.read_text().splitlines()

    agent = f"registry.example.com/kinfer-agent:{recorded()['agent_version']}"
    assert push("0.1.0") == [
        "build -t registry.example.com/kinfer:0.1.0 .",
        "push registry.example.com/kinfer:0.1.0",
        f"manifest inspect {agent}",
        f"tag registry.example.com/kinfer:0.1.0 {agent}",
        f"push {agent}",
    ]
    assert push("0.2.0") == [
        "build -t registry.example.com/kinfer:0.2.0 .",
        "push registry.example.com/kinfer:0.2.0",
        f"manifest inspect {agent}",
    ], "an agent version already pushed is not pushed again"
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md"):
        text = doc.read_text()
        assert "scripts/push-images registry.example.com/kinfer 0.1.0" in text, doc.name
        assert "docker build -t registry.example.com/kinfer:0.1.0" not in text, f"{doc.name}: the old one-image build"
