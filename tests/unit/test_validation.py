"""Validators shared by every body: numbers that jsonb would hand back unencodable are refused."""

from __future__ import annotations

import pytest

from shared import validation as v
from shared.errors import InvalidInput


@pytest.mark.parametrize("value", [1e20, -2.9127467794821977e56, 2**63, -(2**63), [1, {"x": 1e300}]])
def test_metadata_numbers_beyond_64_bits_are_400(value: object) -> None:
    """The fuzz run found it: 201 for the write, then 500 on every read (jsonb returns 1e20 as an integer)."""
    with pytest.raises(InvalidInput, match="beyond") as err:
        v.json_object({"m": value}, "metadata", max_bytes=16384)
    assert err.value.field == "metadata"


def test_metadata_numbers_within_64_bits_pass() -> None:
    body = {"a": 2**63 - 1, "b": -(2**62), "c": 1.5e18, "d": 1e-300, "e": True}
    assert v.json_object(body, "metadata", max_bytes=16384) == body


def test_a_body_nested_deeper_than_the_encoder_goes_is_a_400_not_a_500() -> None:
    from shared.validation import MAX_DEPTH, parse_json

    assert parse_json(b'{"a": ' + b"[" * 3 + b"]" * 3 + b"}") == {"a": [[[]]]}
    assert "a" in parse_json(b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}")
    for depth in (MAX_DEPTH, 600, 1000):
        with pytest.raises(InvalidInput) as err:
            parse_json(b'{"a": ' + b"[" * depth + b"]" * depth + b"}")
        assert "deeper than" in err.value.message and err.value.field == "body"


@pytest.mark.parametrize("version", ["\u0663", "1.\u0661", "\uff11", "1.0.\u0969"])
def test_a_version_is_ascii_digits(version: str) -> None:
    """It goes into X-Model-Version: a Unicode digit registered once, then every inference answered 500."""
    from shared import registry

    body = {"name": "m", "version": version, "framework": "onnx", "format": "onnx"}
    with pytest.raises(InvalidInput) as err:
        registry.validate_create(body)
    assert err.value.field == "version"


def test_a_body_of_too_many_arrays_is_refused_before_it_is_parsed() -> None:
    import gc

    from shared.validation import MAX_CONTAINERS, parse_json

    flood = b'{"model": "m", "input": {"x": [' + b",".join([b"[]"] * (MAX_CONTAINERS + 1)) + b"]}}"
    with pytest.raises(InvalidInput) as refused:
        parse_json(flood)
    assert refused.value.field == "body" and f"holds {MAX_CONTAINERS + 4:,} arrays and objects" in refused.value.message
    assert gc.isenabled()


def test_brackets_inside_strings_are_not_containers() -> None:
    from shared.validation import MAX_CONTAINERS, parse_json

    text = "[{" * (MAX_CONTAINERS // 2 + 10)  # a string full of brackets: one object, no array
    assert parse_json(('{"text": "' + text + '"}').encode()) == {"text": text}


def test_the_collector_is_paused_only_while_a_body_is_parsed() -> None:
    import gc

    from shared.validation import parse_json

    assert gc.isenabled()
    assert parse_json(b'{"a": [[1], [2]]}') == {"a": [[1], [2]]}
    assert gc.isenabled()
    with pytest.raises(InvalidInput):
        parse_json(b'{"a": [')
    assert gc.isenabled()  # back on after a malformed body too
    gc.disable()
    try:
        parse_json(b"[1]")
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("raw", "repeated"),
    [
        (b'{"a": "x:y", "b": ["1:2", "3:4"]}', False),
        (b'{"a": "x:y", "a": "z"}', True),
        (b'{"\\u003a": 1, "b": {"c": 1, "c": 2}}', True),  # an escaped ':' makes up for the dropped key's
        (b'{"a": "\\u003a", "b": 1}', False),
    ],
)
def test_repeated_keys_are_found_whatever_the_strings_hold(raw: bytes, repeated: bool) -> None:
    from shared.validation import parse_json

    if repeated:
        with pytest.raises(InvalidInput, match="same key twice"):
            parse_json(raw)
    else:
        assert isinstance(parse_json(raw), dict)


def test_a_flat_list_over_the_element_bound_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.backends.triton import TensorSpec
    from shared.inference import codec

    def unreachable(*args: object) -> None:
        raise AssertionError("the elements were read")

    monkeypatch.setattr(codec, "_small_flat", unreachable)
    with pytest.raises(InvalidInput, match="has 11 elements; one request may carry at most 10"):
        codec.to_array(["a"] * 11, TensorSpec("x", "FP32", (4,)), "input.x", "expected x", max_elements=10)
