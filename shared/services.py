"""The process-wide container of thread-safe clients, built lazily from Settings.

Functions call ``get_services()``; tests call ``reset_services(settings)``.
Domain modules that need a client of their own register it with
``services.component(name, factory)`` instead of editing this file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any, TypeVar

from shared.settings import Settings

T = TypeVar("T")

_lock = threading.Lock()
_services: Services | None = None


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._components: dict[str, Any] = {}
        self._component_lock = threading.RLock()  # a factory may ask for another component

    @cached_property
    def db(self) -> Any:
        from shared.clients.db import Database

        return Database(self.settings)

    @cached_property
    def cache(self) -> Any:
        from shared.clients.cache import Cache

        return Cache(self.settings)

    @cached_property
    def s3(self) -> Any:
        from shared.clients.storage import make_s3_client

        return make_s3_client(self.settings)

    def component(self, name: str, factory: Callable[[Services], T]) -> T:
        """The component ``name``, created once with ``factory(self)`` on first use."""
        found = self._components.get(name)
        if found is None:
            with self._component_lock:
                found = self._components.get(name)
                if found is None:
                    found = factory(self)
                    self._components[name] = found
        return found

    def close(self) -> None:
        for value in list(self._components.values()) + [self.__dict__.get(k) for k in ("db", "cache")]:
            closer = getattr(value, "close", None)
            if callable(closer):
                closer()
        self._components.clear()


def get_services() -> Services:
    """The process's services, created from the environment on first use."""
    global _services
    if _services is None:
        with _lock:
            if _services is None:
                _services = Services(Settings.from_env())
    return _services


def reset_services(settings: Settings | None = None) -> Services | None:
    """Close the current services; install new ones built from ``settings`` (tests, CLI)."""
    global _services
    with _lock:
        if _services is not None:
            _services.close()
        _services = Services(settings) if settings is not None else None
        return _services
