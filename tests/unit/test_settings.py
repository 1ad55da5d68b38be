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
    s = Settings.from_env(
        environ={"DATABASE_URL": "postgresql+pg8000://u:hunter2@db:5432/k", "S3_SECRET_ACCESS_KEY": "topsecret"}
    )
    text = repr(s)
    assert "hunter2" not in text and "topsecret" not in text
    assert "u:***@db:5432" in text


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+pg8000", "POSTGRESQL"])
def test_the_standard_postgresql_scheme_is_mapped_to_pg8000(scheme: str) -> None:
    s = Settings.from_env(environ={"DATABASE_URL": f"{scheme}://u:pw@db:5432/kinfer"})
    assert s.database_url == "postgresql+pg8000://u:pw@db:5432/kinfer"


@pytest.mark.parametrize("url", ["postgresql+psycopg://u:hunter2@db/k", "mysql://u:hunter2@db/k", "hunter2"])
def test_an_unusable_database_url_is_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(environ={"DATABASE_URL": url})
    text = str(err.value)
    assert "DATABASE_URL" in text and "postgresql://" in text and "hunter2" not in text and "\n" not in text


def test_number_errors_say_what_is_expected() -> None:
    with pytest.raises(ConfigError, match=r"CACHE_TTL_S: must be an integer between 1 and 86400, not 'soon'"):
        Settings.from_env(environ={"CACHE_TTL_S": "soon"})
    with pytest.raises(ConfigError, match=r"REDIS_TIMEOUT_S: must be a number between"):
        Settings.from_env(environ={"REDIS_TIMEOUT_S": "fast"})


def test_cors_origins_are_parsed_and_checked() -> None:
    s = Settings.from_env(environ={"CORS_ALLOWED_ORIGINS": " https://App.example.com/ , http://localhost:3000"})
    assert s.cors_allowed_origins == ("https://app.example.com", "http://localhost:3000")
    assert Settings.from_env(environ={}).cors_allowed_origins == ()
    assert Settings.from_env(environ={"CORS_ALLOWED_ORIGINS": "*"}).cors_allowed_origins == ("*",)
    for bad in ("app.example.com", "https://app.example.com/path", "ftp://x.example.com"):
        with pytest.raises(ConfigError, match="CORS_ALLOWED_ORIGINS: .* is not an origin"):
            Settings.from_env(environ={"CORS_ALLOWED_ORIGINS": bad})


def test_client_settings_are_apart_from_server_settings() -> None:
    from shared.settings import ClientSettings

    c = ClientSettings.from_env(
        environ={"KINFER_URL": "https://api.example.com", "KINFER_API_KEY": "kf_secret", "KINFER_DEBUG": "1"}
    )
    assert (c.url, c.api_key, c.debug) == ("https://api.example.com", "kf_secret", True)
    assert "kf_secret" not in repr(c)
    assert not {"KINFER_URL", "KINFER_API_KEY"} & set(Settings.env_names())  # never deployed config
