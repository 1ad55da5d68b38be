"""Registry input validation: every rule of the model JSON contract, no database needed."""

from __future__ import annotations

from typing import Any

import pytest

from shared import registry
from shared.errors import InvalidInput, NotFound

GOOD = {"name": "iris", "version": "1.0.0", "framework": "onnx", "format": "onnx"}


def test_minimal_create_defaults_triton_model_to_name() -> None:
    row = registry.validate_create(dict(GOOD))
    assert row["triton_model"] == "iris" and row["name"] == "iris"


@pytest.mark.parametrize("missing", ["name", "version", "framework", "format"])
def test_missing_required_field_is_named(missing: str) -> None:
    body = dict(GOOD)
    del body[missing]
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(body)
    assert err.value.field == missing and "required" in err.value.message


def test_framework_error_lists_allowed_values() -> None:
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(dict(GOOD, framework="keras"))
    assert err.value.field == "framework"
    assert all(f in err.value.message for f in registry.FRAMEWORKS)


@pytest.mark.parametrize(
    "field,value",
    [
        ("name", "bad name"),
        ("name", "-x"),
        ("name", "x" * 129),
        ("name", 12),
        ("version", "v1"),
        ("version", "1.2.3.4"),
        ("version", ""),
        ("format", "zip"),
        ("status", "retired"),
        ("tags", "demo"),
        ("tags", ["ok", "no spaces"]),
        ("tags", ["t"] * 33),
        ("metadata", [1]),
        ("metadata", {"a": "x" * 20000}),
        ("description", "d" * 5000),
        ("backend_url", "not a url!"),
        ("backend_urls", "host:1"),
        ("backend_urls", ["h:1", "h:1"]),
    ],
)
def test_bad_values_are_400_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(dict(GOOD, **{field: value}))
    assert err.value.field == field


def test_nested_metadata_is_bounded() -> None:
    deep: dict = {}
    node = deep
    for _ in range(20):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(dict(GOOD, metadata=deep))
    assert "nested" in err.value.message


def test_unknown_and_read_only_fields_are_rejected() -> None:
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(dict(GOOD, colour="red"))
    assert err.value.field == "colour"
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(dict(GOOD, id="x"))
    assert "read-only" in err.value.message


def test_backend_url_and_urls_normalise_to_a_list() -> None:
    assert registry.validate_create(dict(GOOD, backend_url="triton:8001"))["backend_urls"] == ["triton:8001"]
    both = registry.validate_create(dict(GOOD, backend_urls=["a:1", "grpc://b:2"]))
    assert both["backend_urls"] == ["a:1", "grpc://b:2"]
    with pytest.raises(InvalidInput):
        registry.validate_create(dict(GOOD, backend_url="a:1", backend_urls=["b:2"]))


def test_update_rejects_identity_fields_and_empty_patch() -> None:
    with pytest.raises(InvalidInput) as err:
        registry.validate_update({"name": "other"})
    assert err.value.field == "name"
    with pytest.raises(InvalidInput):
        registry.validate_update({})
    assert registry.validate_update({"status": "deprecated"}) == {"status": "deprecated"}


def test_malformed_id_is_not_found() -> None:
    with pytest.raises(NotFound):
        registry.parse_id("../../etc/passwd")


def test_version_ordering_is_numeric() -> None:
    assert max(["1.9", "1.10", "1.2.0"], key=registry.version_key) == "1.10"


def test_the_did_you_mean_suggestion_does_bounded_work_with_many_models(monkeypatch: Any) -> None:
    """With thousands of models an unknown name cost 55-66 ms of CPU; the fuzzy match now sees at most
    MAX_SUGGEST_CANDIDATES names (those with the same first letter), and still finds the typo."""
    import difflib

    from shared.registry import reads

    names = [f"{chr(97 + i % 26)}model-{i}" for i in range(10_000)] + ["resnet50"]
    seen: list[int] = []
    real = difflib.get_close_matches

    def counting(word: str, possibilities: Any, **kw: Any) -> Any:
        seen.append(len(possibilities))
        return real(word, possibilities, **kw)

    monkeypatch.setattr(reads.difflib, "get_close_matches", counting)
    assert "'resnet50'" in reads.suggestion("resnet5O", names)
    assert seen and max(seen) <= reads.MAX_SUGGEST_CANDIDATES
    assert "GET /v1/models" in reads.suggestion("zzzzzzzzzzzz", names[:5])
