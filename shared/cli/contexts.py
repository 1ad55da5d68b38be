"""The ``kinfer`` config file: named contexts (an API URL and its key), like kubectl's.

Where: KINFER_CONFIG, else ``$XDG_CONFIG_HOME/kinfer/config.toml``, else
``~/.config/kinfer/config.toml``. What::

    current-context = "prod"

    [contexts.prod]
    url = "https://api.kinfer.example.com"
    key = "kf_..."

The file holds keys, so it is written with mode 0600 (atomically: a temporary
file renamed over it) and nothing prints a key from it, only its prefix.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.cli.errors import UsageError
from shared.settings import ClientSettings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY = re.compile(r"[A-Za-z0-9._~+/=-]{1,256}")


@dataclass(frozen=True)
class Context:
    name: str
    url: str = ""
    key: str = ""


@dataclass
class Config:
    path: Path
    current: str = ""
    contexts: dict[str, Context] = field(default_factory=dict)

    def get(self, name: str) -> Context:
        """The context called ``name``; UsageError naming the ones there are."""
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none yet"
            raise UsageError(
                f"no context named {name!r} in {self.path} (contexts: {known}; "
                "add one with `kinfer config set-context NAME --url URL --key KEY`)"
            )
        return self.contexts[name]


def config_path(settings: ClientSettings) -> Path:
    if settings.config_file:
        return Path(settings.config_file).expanduser()
    base = Path(settings.xdg_config_home) if settings.xdg_config_home else _home(settings) / ".config"
    return base / "kinfer" / "config.toml"


def _home(settings: ClientSettings) -> Path:
    return Path(settings.home) if settings.home else Path.home()


def load(path: Path) -> Config:
    """The config at ``path`` (empty when there is no file); UsageError in one line when it is malformed."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Config(path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {path} cannot be read ({exc}); fix it or delete it") from None
    current = raw.get("current-context", "")
    contexts = raw.get("contexts", {})
    if not isinstance(current, str) or not isinstance(contexts, dict):
        raise UsageError(f"config file {path}: current-context must be a string and [contexts.NAME] tables")
    config = Config(path, current)
    for name, body in contexts.items():
        if not isinstance(body, dict) or not all(isinstance(body.get(k, ""), str) for k in ("url", "key")):
            raise UsageError(f"config file {path}: [contexts.{name}] must hold url and key strings")
        config.contexts[name] = Context(name, body.get("url", ""), body.get("key", ""))
    return config


def save(config: Config) -> None:
    """Write the config atomically, readable by its owner only (it holds keys)."""
    config.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=config.path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(config))
        os.replace(tmp, config.path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps(config: Config) -> str:
    """TOML of the config (strings only: a JSON string with raw non-ASCII is a TOML basic string)."""
    lines = [
        "# kinfer contexts: `kinfer config --help`. Holds API keys: keep it private (mode 0600).",
        f"current-context = {_quote(config.current)}",
        "",
    ]
    for name in sorted(config.contexts):
        ctx = config.contexts[name]
        lines += [f"[contexts.{_quote(name)}]", f"url = {_quote(ctx.url)}"]
        if ctx.key:
            lines.append(f"key = {_quote(ctx.key)}")
        lines.append("")
    return "\n".join(lines)


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UsageError(f"context name {name[:64]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_url(url: str) -> str:
    """An API base URL: http(s)://host[:port][/path], no query; trailing slash dropped."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(f"URL {url[:100]!r} must look like https://api.kinfer.example.com or http://localhost:8080")
    try:
        parts.port  # noqa: B018 (raises for a malformed port)
    except ValueError:
        raise UsageError(f"URL {url[:100]!r} has a malformed port") from None
    return url.rstrip("/")


def check_key(key: str) -> str:
    if not KEY.fullmatch(key):
        raise UsageError("an API key is 1-256 url-safe characters (letters, digits and . _ ~ + / = -)")
    return key
