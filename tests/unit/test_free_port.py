"""The tests' port picker: a port drawn once is never drawn again in the same process."""

from __future__ import annotations

from tests.conftest import free_port


def test_free_port_never_hands_out_the_same_port_twice() -> None:
    drawn = [free_port() for _ in range(500)]
    assert len(set(drawn)) == len(drawn)
    assert all(20000 <= p <= 30000 for p in drawn)
