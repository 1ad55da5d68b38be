"""Settings: defaults, one error naming every bad variable, redacted secrets."""

from __future__ import annotations

import pytest

from shared.settings import ConfigError, Settings


def test_settings_defaults_and_overrides() -> None:
    s = Settings.from_env(environ={"CACHE_TTL_S": "7"}, batch_chunk_size=3)
    assert s.cache_ttl_s == 7 and s.batch_chunk_size == 3 and s.auth_required is True


def test_settings_names_every_bad_variable() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(environ={"CACHE_TTL_S": "soon", "AUTH_REQUIRED": "maybe", "PORT": "70000"})
    text = str(err.value)
    assert "CACHE_TTL_S" in text and "AUTH_REQUIRED" in text and "PORT" in text


def test_settings_repr_redacts_secrets() -> None:
    s = Settings.from_env(environ={"DATABASE_URL": "postgresql+pg8000://u:hunter2@db:5432/k",
                                   "S3_SECRET_ACCESS_KEY": "topsecret"})
    text = repr(s)
    assert "hunter2" not in text and "topsecret" not in text
    assert "u:***@db:5432" in text
