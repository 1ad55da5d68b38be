"""Where `kinfer` API commands connect: flags > KINFER_URL/KINFER_API_KEY > config context, the dev key
only for the local stack (and said), a context's key only for its own URL."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from shared.cli import api, contexts
from shared.cli.errors import UsageError
from shared.settings import ClientSettings


def settings(tmp_path: Path, **env: str) -> ClientSettings:
    return ClientSettings.from_env(environ={"XDG_CONFIG_HOME": str(tmp_path), **env})


def args(**flags: str | None) -> argparse.Namespace:
    return argparse.Namespace(**{"url": None, "key": None, "context": None, **flags})


def write(tmp_path: Path, current: str = "", **ctxs: tuple[str, str]) -> Path:
    config = contexts.Config(
        tmp_path / "kinfer" / "config.toml", current, {n: contexts.Context(n, u, k) for n, (u, k) in ctxs.items()}
    )
    contexts.save(config)
    return config.path


def test_the_config_file_follows_xdg_config_home_then_home() -> None:
    assert contexts.config_path(ClientSettings.from_env(environ={"XDG_CONFIG_HOME": "/x"})) == Path(
        "/x/kinfer/config.toml"
    )
    home = ClientSettings.from_env(environ={"HOME": "/h"})
    assert contexts.config_path(home) == Path("/h/.config/kinfer/config.toml")
    assert contexts.config_path(ClientSettings.from_env(environ={"KINFER_CONFIG": "/c.toml", "HOME": "/h"})) == Path(
        "/c.toml"
    )


def test_nothing_configured_is_the_local_stack_with_its_dev_key(tmp_path: Path) -> None:
    conn = api.resolve(args(), settings(tmp_path))
    assert (conn.url, conn.key, conn.key_source) == (api.LOCAL_URL, api.LOCAL_DEV_KEY, "local dev key")


def test_the_dev_key_is_said_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    api.connect(args(), settings(tmp_path))
    err = capsys.readouterr().err
    assert "dev key demo-token" in err and "KINFER_API_KEY" in err


def test_a_remote_url_without_a_key_is_a_usage_error_never_the_dev_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no API key for https://api.example.com.*KINFER_API_KEY") as err:
        api.resolve(args(url="https://api.example.com"), settings(tmp_path))
    assert err.value.exit_code == 2


def test_flags_win_over_env_and_env_over_the_context(tmp_path: Path) -> None:
    write(tmp_path, "prod", prod=("https://prod.example.com", "kf_prodkey"))
    s = settings(tmp_path, KINFER_URL="https://env.example.com", KINFER_API_KEY="kf_envkey")
    flagged = api.resolve(args(url="https://flag.example.com", key="kf_flagkey"), s)
    assert (flagged.url, flagged.key, flagged.key_source) == ("https://flag.example.com", "kf_flagkey", "--key")
    conn = api.resolve(args(), s)
    assert (conn.url, conn.key, conn.key_source) == ("https://env.example.com", "kf_envkey", "KINFER_API_KEY")
    conn = api.resolve(args(), settings(tmp_path))
    assert (conn.url, conn.key, conn.context, conn.key_source) == (
        "https://prod.example.com",
        "kf_prodkey",
        "prod",
        "context prod",
    )


def test_a_context_key_is_only_sent_to_its_own_url(tmp_path: Path) -> None:
    write(tmp_path, "prod", prod=("https://prod.example.com", "kf_prodkey"))
    with pytest.raises(UsageError, match="no API key for https://staging.example.com"):
        api.resolve(args(), settings(tmp_path, KINFER_URL="https://staging.example.com"))
    local = api.resolve(args(url="http://localhost:8080"), settings(tmp_path))
    assert local.key == api.LOCAL_DEV_KEY  # the prod key never goes to another host
    same = api.resolve(args(url="https://prod.example.com/"), settings(tmp_path))
    assert same.key == "kf_prodkey"


def test_context_by_flag_or_env_and_an_unknown_one_names_those_there_are(tmp_path: Path) -> None:
    write(tmp_path, "a", a=("https://a.example.com", "kf_a"), b=("https://b.example.com", "kf_b"))
    assert api.resolve(args(context="b"), settings(tmp_path)).key == "kf_b"
    assert api.resolve(args(), settings(tmp_path, KINFER_CONTEXT="b")).key == "kf_b"
    with pytest.raises(UsageError, match=r"no context named 'c' .*contexts: a, b"):
        api.resolve(args(context="c"), settings(tmp_path))


def test_the_config_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, "x", x=("https://x.example.com", "kf_x"), y=("http://h:1", ""))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    config = contexts.load(path)
    assert config.current == "x" and config.contexts["x"].key == "kf_x" and config.contexts["y"].key == ""


def test_a_broken_config_file_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "kinfer" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text("current-context = [unclosed\n")
    with pytest.raises(UsageError) as err:
        api.resolve(args(), settings(tmp_path))
    assert str(path) in err.value.message and "fix it or delete it" in err.value.message


@pytest.mark.parametrize("url", ["api.example.com", "ftp://x", "https://x.example.com?a=1", "http://h:notaport"])
def test_malformed_urls_are_usage_errors(tmp_path: Path, url: str) -> None:
    with pytest.raises(UsageError, match="URL"):
        api.resolve(args(url=url, key="kf_x"), settings(tmp_path))


def test_keys_are_displayed_by_prefix_only() -> None:
    assert api.display_key("kf_abcdefghijklmnop") == "kf_abcdefg..."
    assert api.display_key("supersecret") == "supe..."
    assert api.display_key("") == "-"


def test_a_client_can_still_be_built_from_a_url_and_key() -> None:
    client = api.Client("http://localhost:8080/", "kf_x")
    assert (client.base_url, client.connection.key) == ("http://localhost:8080", "kf_x")
