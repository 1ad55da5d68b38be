"""Callbacks of async inference requests: which ``callback_url`` is allowed, the signature, the POST.

A callback may only reach the internet: a host whose addresses are all global (not private, loopback,
link-local, shared, reserved or multicast), checked when the request is accepted and again, on the
addresses actually connected to, at every delivery (DNS may change in between; the POST goes to the
address that was checked, never a second lookup, and redirects are not followed). A host of
CALLBACK_ALLOWLIST (fnmatch patterns of ``host`` or ``host:port``) may be internal: that is how an
operator lets a receiver inside the cluster be called.

The body is signed as Stripe and GitHub webhooks are: ``Kinfer-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256 of "<t>.<body>" under the callback secret of the API key that sent the request>`` (each key
has its own, ``shared.access.keys``: shown when the key is created, rotated by
``POST /v1/keys/{id}/callback-secret``), so a receiver that verifies with its key's secret knows the
callback is about its own request; ``Kinfer-Request-Id`` names the request (a receiver dedupes by it:
delivery is at least once). A request sent without a key (AUTH_REQUIRED off) is signed with
CALLBACK_SIGNING_SECRET itself.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import urllib3

from shared.domain import ANONYMOUS
from shared.errors import Conflict, InvalidInput, Unavailable

MAX_URL_LEN = 2048
TIMEOUT = urllib3.Timeout(connect=5.0, read=15.0)
USER_AGENT = "kinfer-callback/1"
Resolve = Callable[[str, int], Sequence[str]]
# the callback secret of an API key id (None: no such key); ``KeyStore.callback_secret_of``
SecretOf = Callable[[str], "str | None"]


class CallbackRefused(Exception):
    """The callback URL may not be called (now): a permanent failure, never retried."""


log = logging.getLogger(__name__)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Kinfer-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance_s`` (what a receiver does)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (Unavailable when the lookup fails: DNS may be back later)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        log.info("callback host %r does not resolve: %s", host[:100], exc)
        raise Unavailable(f"callback host {host[:100]!r} does not resolve", retry_after=5) from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: str) -> bool:
    """Whether an address is on the internet (an IPv4-mapped IPv6 address is judged as its IPv4)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:  # 2002::/16 carries an IPv4 address: judged as that address
            ip = ip.sixtofour
        elif ip.teredo is not None:
            return False
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _parts(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a well-formed callback URL; InvalidInput otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LEN or not url.isascii():
        raise InvalidInput(
            f"callback_url must be an http(s) URL of at most {MAX_URL_LEN} characters", field="callback_url"
        )
    if any(c <= " " or c == "\x7f" for c in url):  # no request line could carry it: refused now, not at delivery
        raise InvalidInput(
            "callback_url may not hold spaces or control characters (percent-encode them: %20)", field="callback_url"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("callback_url is not a valid URL", field="callback_url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("callback_url must be an http:// or https:// URL with a host", field="callback_url")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidInput("callback_url may not carry credentials or a fragment", field="callback_url")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class CallbackPolicy:
    """Decides which callback URLs may be called, and calls them (signed, pinned to the checked address)."""

    def __init__(
        self,
        allowlist: Sequence[str],
        secret: str,
        resolve: Resolve = system_resolve,
        secret_of: SecretOf | None = None,
    ) -> None:
        self.allowlist = tuple(p.lower() for p in allowlist)
        self.secret = secret  # CALLBACK_SIGNING_SECRET: callbacks are off without it
        self.resolve = resolve
        self.secret_of = secret_of

    def secret_for(self, owner: str) -> str:
        """The secret that signs the callbacks of ``owner`` (the request's key id): the key's own; the
        installation's for a request sent without a key. CallbackRefused when the key is gone."""
        if self.secret_of is None or owner == ANONYMOUS:
            return self.secret
        secret = self.secret_of(owner)
        if secret is None:
            raise CallbackRefused("the API key that sent the request no longer exists: nothing can sign its callback")
        return secret

    def allow_listed(self, host: str, port: int) -> bool:
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(f"{host}:{port}", p) for p in self.allowlist)

    def check(self, url: str) -> str:
        """The URL when a request may name it (400 saying why not; 409 ``callbacks_off`` without
        CALLBACK_SIGNING_SECRET, as ``POST /v1/keys/self/callback-secret`` answers); its host is resolved and
        checked now."""
        if not self.secret:
            raise Conflict(
                "callbacks are off on this installation: CALLBACK_SIGNING_SECRET is not set (an operator sets it "
                "to sign callbacks); poll GET /v1/requests/{id} instead",
                code="callbacks_off",
                field="callback_url",
            )
        try:
            self.addresses(url)
        except CallbackRefused as exc:
            raise InvalidInput(str(exc), field="callback_url") from None
        except Unavailable as exc:
            raise InvalidInput(exc.message, field="callback_url") from None
        return url

    def addresses(self, url: str) -> list[str]:
        """The addresses to connect to for ``url``: CallbackRefused when any is internal and the host is not
        allow-listed; Unavailable when it does not resolve."""
        _, host, port = _parts(url)
        addresses = self.resolve(host, port)
        if not addresses:
            raise Unavailable(f"callback host {host[:100]!r} has no address", retry_after=5)
        if self.allow_listed(host, port):
            return list(addresses)
        internal = [a for a in addresses if not is_public(a)]
        if internal:  # the address stays in the log: the answer must not map internal names for a caller
            log.info("callback host %r refused: it resolves to %s", host[:100], internal[0])
            raise CallbackRefused(
                f"callback_url host {host[:100]!r} is not a public host; callbacks only reach public hosts unless "
                "an operator adds the host to CALLBACK_ALLOWLIST"
            )
        return list(addresses)

    def deliver(self, url: str, request_id: str, body: bytes, secret: str | None = None) -> int:
        """POST ``body`` signed (with ``secret``, by default the installation's) to ``url``; its 2xx status.
        CallbackRefused when the host is (now) internal;
        Unavailable on a connection error or a non-2xx answer (so the event is redelivered)."""
        scheme, host, port = _parts(url)
        address = self.addresses(url)[0]
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Kinfer-Request-Id": request_id,
            "Kinfer-Signature": sign(secret if secret is not None else self.secret, int(time.time()), body),
            "Host": parts.netloc.rsplit("@", 1)[-1],
        }
        pool: urllib3.HTTPConnectionPool
        if scheme == "https":  # connect to the checked address; TLS still verifies the host name
            pool = urllib3.HTTPSConnectionPool(
                address, port, timeout=TIMEOUT, retries=False, server_hostname=host, assert_hostname=host
            )
        else:
            pool = urllib3.HTTPConnectionPool(address, port, timeout=TIMEOUT, retries=False)
        try:
            response = pool.urlopen(
                "POST", target, body=body, headers=headers, redirect=False, retries=False, preload_content=True
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"callback to {host[:100]} failed: {type(exc).__name__}", retry_after=30) from None
        finally:
            pool.close()
        if not 200 <= response.status < 300:
            raise Unavailable(f"callback to {host[:100]} answered {response.status}", retry_after=30)
        return int(response.status)
