"""The API key admin function: /v1/keys (``shared.access.keys``) and the audit log ``GET /v1/audit``
(``shared.web.audit``), admin scope only; and
``GET /v1/keys/self``, any valid key: who the caller is (name, scopes), so a client can tell
what it may do (the console hides admin actions from other keys).

A key's secret (and its callback signing secret) is answered once, by the POST that creates it;
``POST /v1/keys/{id}/callback-secret`` (the key itself only, as ``self`` or its id: an admin manages
keys but never learns another key's secret) rotates the callback signing secret and answers the new
one once; lists and reads show its display prefix, never the secret. DELETE revokes (the record stays, with
``revoked_at``); a revoked key stops working within AUTH_CACHE_TTL_S. PATCH changes a key's limits
(``rate_limit_per_minute``, ``tokens_per_minute``), applied within AUTH_CACHE_TTL_S.

``GET /v1/usage`` (any valid key): token usage of the OpenAI-compatible routes per key and model
(``shared.access.tokens``): a key's own, or any key's for an admin key.
"""

from __future__ import annotations

import functions_framework.aio
from starlette.requests import Request
from starlette.responses import Response

from shared.access import auth, keys
from shared.access.tokens import UsageReport
from shared.domain import ApiKey
from shared.registry import Health
from shared.web import schemas as s
from shared.web.audit import actor_of, audit_route
from shared.web.dispatch import dispatch
from shared.web.request import Call
from shared.web.route import LIVEZ, Route
from shared.web.routing import Router
from shared.web.runtime import function_services


def _create(call: Call) -> tuple[int, keys.CreatedKey, dict[str, str]]:
    created = function_services().keys.create_from_body(call.json(), actor_of(call))
    return 201, created, {"Location": f"/v1/keys/{created['id']}"}


def _list(call: Call) -> keys.KeyPage:
    return function_services().keys.list_page(call.args)


def _get(call: Call, key_id: str) -> ApiKey:
    return keys.to_json(function_services().keys.get_key(key_id))


def _update(call: Call, key_id: str) -> ApiKey:
    return function_services().keys.update_from_body(key_id, call.json(), actor_of(call))


def _usage(call: Call) -> UsageReport:
    return function_services().tokens.usage_report(call.args, call.principal)


def _revoke(call: Call, key_id: str) -> ApiKey:
    return keys.to_json(function_services().keys.revoke_key(key_id, actor_of(call)))


async def _self(call: Call) -> auth.WhoAmI:
    return auth.describe(call.principal)


def _rotate_callback_secret(call: Call, key_id: str) -> keys.CallbackSecret:
    key = auth.own_key(call.principal, key_id)
    return function_services().keys.rotate_callback_secret(key, actor_of(call))


def _health(call: Call) -> tuple[int, Health]:
    return function_services().registry.health()


ROUTES = Router(
    [
        LIVEZ,
        Route("/health", ("GET",), _health, query=()),
        Route("/v1/keys", ("POST",), _create, scope="admin", query=()),
        Route("/v1/keys", ("GET",), _list, scope="admin", query=keys.LIST_QUERY),
        Route(
            "/v1/keys/self",
            ("GET",),
            _self,
            scope="any",
            query=(),
            summary="Who this API key is: name, scopes",
            responses={200: ("the caller's key (never its secret)", s.WHOAMI)},
        ),
        Route("/v1/keys/<key_id>", ("GET",), _get, scope="admin", query=()),
        Route("/v1/keys/<key_id>", ("DELETE",), _revoke, scope="admin", query=()),
        Route(
            "/v1/keys/<key_id>",
            ("PATCH",),
            _update,
            scope="admin",
            query=(),
            summary="Change a key's limits: rate_limit_per_minute (requests) and tokens_per_minute (null: the "
            "default); every instance applies them within AUTH_CACHE_TTL_S",
            body=s.KEY_LIMITS,
        ),
        Route(
            "/v1/usage",
            ("GET",),
            _usage,
            scope="any",
            query=s.USAGE_FILTERS,
            summary="Token usage (prompt, completion) per key and model, or per hour: a key's own; an admin "
            "key's, any key's",
            responses={200: ("token usage over the hours that overlap [since, until)", s.USAGE_REPORT)},
        ),
        Route(
            "/v1/keys/<key_id>/callback-secret",
            ("POST",),
            _rotate_callback_secret,
            scope="any",
            query=(),
            summary="Rotate a key's callback signing secret and answer the new one (shown this once); "
            "the key itself only (its id or `self`); 403 for any other key, admin included",
        ),
        audit_route(lambda: function_services().audit),
    ],
    title="Kinfer keys",
)


@functions_framework.aio.http
async def manage_api_keys(request: Request) -> Response:
    return await dispatch(request, ROUTES, function_services(), "keys")
