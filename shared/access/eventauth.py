"""Who may send CloudEvents to the event functions: Knative Eventing's OIDC sender tokens.

With EVENT_AUTH=oidc every event route (``Route(event=True)``) verifies ``Authorization: Bearer <JWT>``
before it reads or parses the event (``shared.web.dispatch``). Knative Eventing's ``authentication-oidc``
feature has the sender (a KafkaSource's dispatcher, for its sink and its dead-letter sink) mint the token
with the Kubernetes TokenRequest API for the OIDC service account of the source
(``<source>-oidc-sources.knative.dev-kafkasource``), so:

- the issuer is the cluster's service-account issuer (EVENT_OIDC_ISSUER) and the signing keys are its
  JWKS (EVENT_OIDC_JWKS_URL, the API server's ``/openid/v1/jwks`` by default);
- the audience is the one the sink declares (``spec.sink.audience`` of the KafkaSource): EVENT_OIDC_AUDIENCE,
  where ``{service}`` stands for this function's Knative Service (K_SERVICE);
- the subject is ``system:serviceaccount:<namespace>:<service account>``, which must be one of
  EVENT_OIDC_SUBJECTS: any pod can mint a token of its own service account for any audience, so the
  audience alone proves nothing.

The signature (asymmetric algorithms only), issuer, audience, expiry and subject are checked by PyJWT; a
token must carry ``iat``, and one minted to live longer than EVENT_OIDC_MAX_LIFETIME_S (``exp - iat``) is
refused however valid it is otherwise (a long-lived token is a stolen or hand-made credential).
A failure answers 401, which Knative does not redeliver: a forged event is dropped at once, and a sender
with a bad token cannot make the dispatcher retry it. When the JWKS cannot be fetched the answer is 503
(the sender did nothing wrong; the event is redelivered). The JWKS is cached; a token signed with a key
id it does not hold refetches it (the issuer rotated its keys), at most once per ``REFRESH_MIN_S``, so
tokens with made-up key ids cannot turn each request into a fetch.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import jwt
import urllib3

from shared.errors import Unauthorized, Unavailable
from shared.settings import ConfigError

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

NONE, OIDC = "none", "oidc"
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
LEEWAY_S = 30  # clock skew between the API server that minted the token and this pod
REFRESH_MIN_S = 30.0  # an unknown key id refetches the JWKS at most this often
MAX_AGE_S = 3600.0  # and the JWKS is refetched when older than this (keys are rotated, not only added)
MAX_JWKS_BYTES = 1024**2
MAX_TOKEN_LEN = 16 * 1024
TIMEOUT = urllib3.Timeout(connect=3.0, read=5.0)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="kinfer-events", error="invalid_token"'}
FetchJwks = Callable[[], bytes]


def _rejected(reason: str) -> Unauthorized:
    return Unauthorized(f"event sender not authenticated: {reason}", code="event_unauthenticated", headers=CHALLENGE)


class EventAuthenticator:
    """Verifies the OIDC token of an event's sender (a no-op with EVENT_AUTH=none)."""

    def __init__(self, settings: Settings, fetch: FetchJwks | None = None) -> None:
        self.mode = settings.event_auth
        self.issuer = settings.event_oidc_issuer
        self.audience = settings.event_oidc_audience.replace("{service}", settings.service_name)
        self.subjects = frozenset(settings.event_oidc_subjects)
        self.max_lifetime_s = settings.event_oidc_max_lifetime_s
        if self.mode == OIDC:
            missing = [
                name
                for name, value in (
                    ("EVENT_OIDC_ISSUER", self.issuer),
                    ("EVENT_OIDC_AUDIENCE", self.audience),
                    ("EVENT_OIDC_JWKS_URL", settings.event_oidc_jwks_url),
                    ("EVENT_OIDC_SUBJECTS", ",".join(self.subjects)),
                )
                if not value
            ]
            if missing:
                raise ConfigError(f"invalid configuration: EVENT_AUTH=oidc needs {', '.join(missing)}")
        self._fetch = fetch or _http_fetch(settings)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._tried_at = -REFRESH_MIN_S  # ... and of the last attempt
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.mode == OIDC

    def verify(self, headers: Mapping[str, str]) -> str | None:
        """The sender's subject (None when EVENT_AUTH=none); Unauthorized (401) for a missing or bad token,
        Unavailable (503) when the signing keys cannot be fetched. May fetch the JWKS: call it off the loop."""
        if not self.enabled:
            return None
        token = _bearer(headers.get("authorization", ""))
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _rejected("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise _rejected(f"token algorithm {str(algorithm)[:16]!r} is not accepted")
        key = self._key(header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _rejected("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise _rejected(f"the token's audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise _rejected("the token's issuer is not the cluster's service-account issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _rejected(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise _rejected(f"invalid token ({type(exc).__name__})") from None
        lifetime = claims["exp"] - claims["iat"]
        if lifetime > self.max_lifetime_s:
            raise _rejected(
                f"the token lives {int(lifetime)} s (exp - iat), longer than {self.max_lifetime_s} s "
                "(EVENT_OIDC_MAX_LIFETIME_S)"
            )
        subject = str(claims.get("sub", ""))
        if subject not in self.subjects:
            log.warning("event refused: token subject %r is not in EVENT_OIDC_SUBJECTS", subject[:200])
            raise _rejected("the token's subject may not send events here")
        return subject

    def _key(self, kid: object) -> jwt.PyJWK:
        """The signing key of ``kid`` from the cached JWKS, refetched when stale or when ``kid`` is new."""
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at > MAX_AGE_S:
            self._refresh(force=self._fetched_at is None)
        found = self._lookup(kid)
        if found is None and self._refresh(force=False):
            found = self._lookup(kid)
        if found is None:
            raise _rejected("the token is not signed with a key of the issuer")
        return found

    def _lookup(self, kid: object) -> jwt.PyJWK | None:
        keys = self._keys
        if kid is None:  # a token without a key id: only unambiguous with a single key
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(str(kid))

    def _refresh(self, force: bool) -> bool:
        """Refetch the JWKS (once however many threads ask; at most every REFRESH_MIN_S unless ``force``);
        whether the keys were replaced. Unavailable when no keys were ever fetched."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._tried_at < REFRESH_MIN_S:
                return False
            self._tried_at = now
            try:
                keys = _parse_jwks(self._fetch())
            except Unavailable:
                if not self._keys:
                    raise
                log.warning("event auth: the JWKS could not be refetched; the cached keys stay in use")
                return False
            self._keys, self._fetched_at = keys, now
            return True


def _bearer(authorization: str) -> str:
    scheme, _, token = authorization.strip().partition(" ")
    if not authorization:
        raise _rejected("no Authorization header (Knative Eventing's authentication-oidc sends a bearer token)")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > MAX_TOKEN_LEN:
        raise _rejected("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _parse_jwks(raw: bytes) -> dict[str, jwt.PyJWK]:
    """Key id -> signing key of a JWKS document (keys it cannot use are skipped); Unavailable when none."""
    try:
        document = json.loads(raw)
        entries = document["keys"] if isinstance(document, dict) else None
    except (ValueError, KeyError):
        entries = None
    if not isinstance(entries, list):
        raise Unavailable("the JWKS of the event token issuer is not a JSON key set", retry_after=10)
    keys: dict[str, jwt.PyJWK] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue
        keys[str(entry.get("kid", f"#{number}"))] = key
    if not keys:
        raise Unavailable("the JWKS of the event token issuer holds no usable signing key", retry_after=10)
    return keys


def _http_fetch(settings: Settings) -> FetchJwks:
    """GET EVENT_OIDC_JWKS_URL (trusting EVENT_OIDC_CA_FILE when set, sending the token of
    EVENT_OIDC_TOKEN_FILE when set, read at every fetch: projected tokens rotate)."""
    url, ca_file, token_file = settings.event_oidc_jwks_url, settings.event_oidc_ca_file, settings.event_oidc_token_file

    def fetch() -> bytes:
        headers = {"Accept": "application/json"}
        try:
            if token_file:
                with open(token_file, encoding="utf-8") as handle:
                    headers["Authorization"] = f"Bearer {handle.read().strip()}"
            context = ssl.create_default_context(cafile=ca_file or None)
        except OSError as exc:
            log.error("event auth: cannot read %s", exc.filename)
            raise Unavailable("event authentication is misconfigured (a CA or token file is unreadable)") from None
        pool = urllib3.PoolManager(ssl_context=context, timeout=TIMEOUT, retries=False)
        try:
            response = pool.request("GET", url, headers=headers, preload_content=False, redirect=False)
            body = response.read(MAX_JWKS_BYTES + 1)
            response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            log.warning("event auth: JWKS fetch from %s failed: %s", url, type(exc).__name__)
            raise Unavailable("the event token issuer's keys cannot be fetched now", retry_after=10) from None
        finally:
            pool.clear()
        if response.status != 200 or len(body) > MAX_JWKS_BYTES:
            log.warning("event auth: JWKS fetch from %s answered %s (%d bytes)", url, response.status, len(body))
            raise Unavailable("the event token issuer's keys cannot be fetched now", retry_after=10)
        return bytes(body)

    return fetch
