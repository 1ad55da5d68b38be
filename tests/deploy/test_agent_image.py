"""A deploy of a new Kinfer image does not roll the Triton Service (issue 19: the model agent beside Triton
used the functions' image, so every new image made a new Triton revision, and a new revision starts a
replica, a GPU, even when Triton is scaled to zero).

The agent has its own image reference at every layer: ``kinfer-agent`` in knative/base (the functions use
``kinfer``), its own ``images`` entry in each overlay, and terraform's ``agent_image`` (the platform module
sets images by patches, never by an ``images`` transformer that would match both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    KNATIVE,
    OVERLAYS,
    PLATFORM,
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
    assert triton_images(before)["model-agent"].startswith("ghcr.io/kinfer/kinfer:"), "the agent is the Kinfer image"


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
    main = (PLATFORM / "main.tf").read_text()
    assert 'agent_image = var.agent_image != "" ? var.agent_image : var.image' in main
    root = {unquote(k): v for block in parse(TF)["variable"] for k, v in block.items() if k != "__is_block__"}
    assert unquote(root["agent_image"].get("default")) == "", "empty: the same as image, until pinned"
    call = {unquote(k): v for block in parse(TF)["module"] for k, v in block.items()}["platform"]
    assert call["agent_image"] == "${var.agent_image}"
    docs = (TF.parent / "docs" / "operations.md").read_text()
    assert "agent_image" in docs, "docs/operations.md says when to pin and when to move agent_image"
