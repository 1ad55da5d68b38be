"""Event senders' OIDC tokens (EVENT_AUTH=oidc): a locally generated RSA key, its JWKS served over real HTTP
by a tiny server on 127.0.0.1, and tokens shaped like the ones Knative Eventing's dispatcher sends (issuer,
audience of the sink, subject of the source's OIDC service account). Then the event route itself: 401 before
the body is read, never a status Knative would redeliver."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request

from shared.access import eventauth
from shared.access.eventauth import EventAuthenticator
from shared.errors import Unauthorized, Unavailable
from shared.settings import ConfigError, Settings
from shared.web.dispatch import dispatch
from shared.web.route import Route
from shared.web.routing import Router

ISSUER = "https://kubernetes.default.svc"
SUBJECT = "system:serviceaccount:kinfer:batch-worker-source-oidc-sources.knative.dev-kafkasource"
AUDIENCE = "kinfer/batch-worker"


class Issuer:
    """RSA signing keys and their JWKS on a local HTTP server (counts the fetches; can be taken down)."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.fetches = 0
        self.down = False
        self.add_key("k1")
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.fetches += 1
                body = json.dumps(outer.jwks()).encode()
                self.send_response(503 if outer.down else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/openid/v1/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, private in self.keys.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(self, kid: str = "k1", key: Any = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": [AUDIENCE], "sub": SUBJECT, "iat": now, "nbf": now, "exp": now + 3600}
        body.update(claims)
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid, **(headers or {})})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    found = Issuer()
    yield found
    found.server.shutdown()
    found.server.server_close()


def settings(issuer: Issuer, **env: str) -> Settings:
    values = {
        "EVENT_AUTH": "oidc",
        "EVENT_OIDC_ISSUER": ISSUER,
        "EVENT_OIDC_JWKS_URL": issuer.url,
        "EVENT_OIDC_SUBJECTS": f"{SUBJECT}, system:serviceaccount:kinfer:other",
        "K_SERVICE": "batch-worker",
        **env,
    }
    return Settings.from_env(environ=values)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_good_token_names_its_sender_and_the_jwks_is_fetched_once(issuer: Issuer) -> None:
    auth = EventAuthenticator(settings(issuer))
    assert auth.audience == AUDIENCE  # kinfer/{service}, the function's K_SERVICE
    assert auth.verify(bearer(issuer.token())) == SUBJECT
    assert auth.verify(bearer(issuer.token())) == SUBJECT
    assert issuer.fetches == 1


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"aud": ["serving.knative.dev/service/kinfer/batch-deadletter"]}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 4200}, "expired"),
        (
            {"sub": "system:serviceaccount:tenant-ns:batch-worker-source-oidc-sources.knative.dev-kafkasource"},
            "subject",
        ),
    ],
)
def test_a_token_for_another_audience_issuer_or_subject_or_expired_is_refused(
    issuer: Issuer, claims: dict[str, Any], reason: str
) -> None:
    auth = EventAuthenticator(settings(issuer))
    with pytest.raises(Unauthorized, match=reason) as refused:
        auth.verify(bearer(issuer.token(**claims)))
    assert refused.value.status == 401 and "WWW-Authenticate" in refused.value.headers


def test_a_token_living_longer_than_the_maximum_or_without_iat_is_refused(issuer: Issuer) -> None:
    now = int(time.time())
    auth = EventAuthenticator(settings(issuer))
    assert auth.max_lifetime_s == 86400  # EVENT_OIDC_MAX_LIFETIME_S's default
    # iat given: the issuer's own clock read could fall in the next second (the figure below was off by one)
    assert auth.verify(bearer(issuer.token(iat=now, nbf=now, exp=now + 86400))) == SUBJECT  # a day exactly: accepted
    ten_years = issuer.token(iat=now, nbf=now, exp=now + 10 * 365 * 86400)
    with pytest.raises(Unauthorized, match=r"lives 315360000 s \(exp - iat\), longer than 86400 s") as refused:
        auth.verify(bearer(ten_years))
    assert refused.value.status == 401 and refused.value.code == "event_unauthenticated"
    with pytest.raises(Unauthorized, match="longer than 3600 s"):  # issued long ago, still valid: its life counts
        EventAuthenticator(settings(issuer, EVENT_OIDC_MAX_LIFETIME_S="3600")).verify(
            bearer(issuer.token(iat=now - 7000, nbf=now - 7000, exp=now + 600))
        )
    now_claims = {"iss": ISSUER, "aud": [AUDIENCE], "sub": SUBJECT, "exp": now + 600}
    no_iat = jwt.encode(now_claims, issuer.keys["k1"], algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized, match="the token has no 'iat' claim"):
        auth.verify(bearer(no_iat))


def test_no_token_or_not_a_bearer_jwt_is_refused(issuer: Issuer) -> None:
    auth = EventAuthenticator(settings(issuer))
    for headers in ({}, {"authorization": "Basic dXNlcjpwdw=="}, bearer("not-a-jwt"), {"authorization": "Bearer "}):
        with pytest.raises(Unauthorized):
            auth.verify(headers)


def test_a_token_signed_with_another_key_or_a_symmetric_algorithm_is_refused(issuer: Issuer) -> None:
    auth = EventAuthenticator(settings(issuer))
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(Unauthorized, match="InvalidSignatureError"):
        auth.verify(bearer(issuer.token(key=impostor)))  # claims kid k1, signed with another key
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": SUBJECT, "iat": now, "exp": now + 60}
    forged = jwt.encode(claims, "k1-" + "x" * 40, algorithm="HS256", headers={"kid": "k1"})
    with pytest.raises(Unauthorized, match="algorithm"):
        auth.verify(bearer(forged))
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(Unauthorized, match="algorithm"):
        auth.verify(bearer(unsigned))


def test_an_unknown_key_id_refetches_the_jwks_once_then_verifies_with_the_rotated_key(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = EventAuthenticator(settings(issuer))
    assert auth.verify(bearer(issuer.token())) == SUBJECT and issuer.fetches == 1
    issuer.add_key("k2")  # the issuer rotates: a key the cache does not hold yet
    monkeypatch.setattr(eventauth, "REFRESH_MIN_S", 0.0)
    assert auth.verify(bearer(issuer.token("k2"))) == SUBJECT
    assert issuer.fetches == 2
    # made-up key ids: at most one refetch per REFRESH_MIN_S, however many tokens name them
    monkeypatch.setattr(eventauth, "REFRESH_MIN_S", 3600.0)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for number in range(5):
        with pytest.raises(Unauthorized, match="not signed with a key of the issuer"):
            auth.verify(bearer(issuer.token(f"nope-{number}", key=stranger)))
    assert issuer.fetches == 2


def test_an_unreachable_jwks_is_503_so_the_event_is_redelivered(issuer: Issuer) -> None:
    issuer.down = True
    auth = EventAuthenticator(settings(issuer))
    with pytest.raises(Unavailable):
        auth.verify(bearer(issuer.token()))
    issuer.down = False
    assert auth.verify(bearer(issuer.token())) == SUBJECT


def test_oidc_without_subjects_is_a_configuration_error(issuer: Issuer) -> None:
    with pytest.raises(ConfigError, match="EVENT_OIDC_SUBJECTS"):
        EventAuthenticator(settings(issuer, EVENT_OIDC_SUBJECTS=""))
    off = EventAuthenticator(Settings.from_env(environ={}))
    assert off.verify({}) is None  # EVENT_AUTH=none: the local stack


# -- the event route ---------------------------------------------------------------------------------
def _event_route(calls: list[Any]) -> Router:
    def handler(call: Any, event: Any) -> tuple[int, dict[str, str]]:
        calls.append(event)
        return 200, {"ok": "yes"}

    return Router([Route("/", ("POST",), handler, event=True, query=())])


def _post(router: Router, host: Any, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
    read = []
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def receive() -> dict[str, Any]:
        read.append(True)
        return {"type": "http.request", "body": body, "more_body": False}

    response = asyncio.run(dispatch(Request(scope, receive), router, host, "test"))
    answer = json.loads(response.body)
    answer["_body_read"] = bool(read)
    return response.status_code, answer


def test_the_event_route_answers_401_before_reading_the_event_and_runs_it_with_a_good_token(issuer: Issuer) -> None:
    config = settings(issuer)
    host = SimpleNamespace(settings=config, event_auth=EventAuthenticator(config))
    calls: list[Any] = []
    router = _event_route(calls)
    event = {"specversion": "1.0", "id": "1", "source": "/forged", "type": "dev.kinfer.batch.chunk.v1", "data": {}}
    headers = {"content-type": "application/cloudevents+json"}
    status, answer = _post(router, host, headers, json.dumps(event).encode())
    assert (status, answer["code"], answer["_body_read"]) == (401, "event_unauthenticated", False)
    wrong = issuer.token(aud=["kinfer/batch-deadletter"])  # a token minted for another event function
    assert _post(router, host, {**headers, **bearer(wrong)}, json.dumps(event).encode())[0] == 401
    assert calls == []
    status, answer = _post(router, host, {**headers, **bearer(issuer.token())}, json.dumps(event).encode())
    assert (status, answer["ok"]) == (200, "yes") and len(calls) == 1
