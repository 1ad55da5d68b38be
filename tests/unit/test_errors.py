"""The error tree: every class distinct."""

from __future__ import annotations

from shared.errors import KinferError


def test_every_error_class_has_distinct_status_or_code() -> None:
    seen = {(cls.status, cls.code) for cls in KinferError.__subclasses__()}
    assert len(seen) == len(KinferError.__subclasses__())
