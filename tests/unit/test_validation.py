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
