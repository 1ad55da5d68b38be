"""The OpenAI-compatible routes through the local gateway (``kinfer serve --gateway`` under uvicorn), with the
official ``openai`` client unchanged, over real PostgreSQL, Redis and Triton serving the demo ``tiny_lm``.

Every expected completion is computed by the model's own pure functions (``models/src/tiny_lm.py`` with the
built ``bigrams.json``): greedy decoding is deterministic, so text, finish reason and token counts must match
exactly, streamed or not."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.conftest import free_port
from tests.integration.servers import serve_gateway

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "system", "content": "You tell short stories."}, {"role": "user", "content": "Tell me one."}]
PROMPT = "once upon a time the"


def _tiny_lm() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_lm_src", ROOT / "models" / "src" / "tiny_lm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LM = _tiny_lm()
BIGRAMS = LM.load_model(ROOT / "models" / "repository" / "tiny_lm" / "1" / LM.MODEL_FILE)


def expected(prompt: str, **sampling: Any) -> Any:
    """What tiny_lm answers ``prompt`` with (its own generate)."""
    return LM.generate(BIGRAMS, prompt, LM.Sampling(**sampling))


def chat_prompt(messages: list[dict[str, str]]) -> str:
    """The documented chat template (a content's further lines indented by two spaces)."""
    return "\n".join(
        [*(f"{m['role']}: {m['content'].replace(chr(10), chr(10) + '  ')}" for m in messages), "assistant:"]
    )


@dataclasses.dataclass
class Served:
    base: str
    name: str
    key: str
    key_id: str
    limited: str
    counted: str
    counted_id: str
    iris: str
    crowd: tuple[str, ...]

    def client(self, key: str | None = None, base: str = "/openai/v1") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + base, api_key=key or self.key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def served(base_settings: Any, triton: Any) -> Iterator[Served]:
    from shared.services import reset_services

    settings = dataclasses.replace(base_settings, triton_url=triton.grpc_url, auth_required=True)
    services = reset_services(settings)
    name = f"lm-{uuid.uuid4().hex[:8]}"
    for version in ("1", "2"):
        services.registry.create_model(
            {
                "name": name,
                "version": version,
                "framework": "python",
                "format": "python",
                "backend_url": triton.grpc_url,
                "triton_model": "tiny_lm",
                "tags": ["demo", "generative"],
                "metadata": {"task": "text-generation"},
            },
        )
    services.aliases.put_alias(name, "canary", {"version": "1"})  # the bare name: the newest, 2
    iris = f"iris-{uuid.uuid4().hex[:6]}"
    services.registry.create_model(  # not a text-generation model: not listed
        {
            "name": iris,
            "version": "1",
            "framework": "python",
            "format": "python",
            "backend_url": triton.grpc_url,
            "triton_model": "iris_classifier",
        },
    )
    record, key = services.keys.create_key(f"oa-{uuid.uuid4().hex[:6]}", "infer")
    _, limited = services.keys.create_key(f"oa-tpm-{uuid.uuid4().hex[:6]}", "infer", tokens_per_minute=20)
    counted_record, counted = services.keys.create_key(f"oa-use-{uuid.uuid4().hex[:6]}", "infer")
    crowd = tuple(services.keys.create_key(f"oa-crowd-{i}-{uuid.uuid4().hex[:6]}", "infer")[1] for i in range(3))
    reset_services(None)
    with serve_gateway(free_port(), settings) as base:
        yield Served(base, name, key, record["id"], limited, counted, counted_record["id"], iris, crowd)


def test_chat_completion(served: Served) -> None:
    answer = served.client().chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=12)
    want = expected(chat_prompt(MESSAGES), max_tokens=12)
    assert answer.object == "chat.completion" and answer.model == f"{served.name}:2"
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (want.prompt_tokens, 12)
    assert answer.usage.total_tokens == want.prompt_tokens + 12


def test_chat_completion_streamed_token_by_token(served: Served) -> None:
    stream = served.client().chat.completions.create(
        model=served.name,
        messages=MESSAGES,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    want = expected(chat_prompt(MESSAGES), max_tokens=12)
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == want.deltas and "".join(deltas) == want.text  # one event per token
    finished = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finished == ["length"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        want.prompt_tokens,
        12,
        want.prompt_tokens + 12,
    )
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")


def test_the_sse_framing_on_the_wire(served: Served) -> None:
    r = requests.post(
        f"{served.base}/v1/chat/completions",
        json={"model": served.name, "messages": MESSAGES, "max_tokens": 3, "stream": True},
        headers={"Authorization": f"Bearer {served.key}"},
        stream=True,
        timeout=30,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-model-version"] == "2" and r.headers["x-request-id"]
    raw = r.content.decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert len(events[:-2]) == 1 + 3 + 1  # the role, three tokens, the finish reason


def test_completions_streamed_and_not(served: Served) -> None:
    client = served.client()
    want = expected(PROMPT, max_tokens=8)
    answer = client.completions.create(model=served.name, prompt=PROMPT, max_tokens=8)
    assert answer.object == "text_completion" and answer.choices[0].text == want.text
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 8)
    pieces = list(client.completions.create(model=served.name, prompt=PROMPT, max_tokens=8, stream=True))
    assert [p.choices[0].text for p in pieces if p.choices[0].text] == want.deltas
    assert pieces[-1].choices[0].finish_reason == "length"


def test_the_v1_base_url_works_too(served: Served) -> None:
    answer = served.client(base="/v1").completions.create(model=served.name, prompt=PROMPT, max_tokens=2)
    assert answer.choices[0].text == expected(PROMPT, max_tokens=2).text


def test_stop_ends_the_completion_before_the_stop_string(served: Served) -> None:
    full = expected(PROMPT, max_tokens=10)
    stop = full.deltas[3].strip()  # the fourth word
    want = expected(PROMPT, max_tokens=10, stop=(stop,))
    answer = served.client().completions.create(model=served.name, prompt=PROMPT, max_tokens=10, stop=[stop])
    assert answer.choices[0].finish_reason == "stop" and want.finish_reason == "stop"
    assert answer.choices[0].text == want.text and stop not in answer.choices[0].text
    assert answer.usage is not None and answer.usage.completion_tokens == want.completion_tokens
    messages = [{"role": "user", "content": PROMPT}]
    stop = expected(chat_prompt(messages), max_tokens=10).deltas[2].strip()
    want = expected(chat_prompt(messages), max_tokens=10, stop=(stop,))
    streamed = list(
        served.client().chat.completions.create(
            model=served.name, messages=messages, max_tokens=10, stop=stop, stream=True
        )
    )
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == ["stop"]
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want.text


def test_max_tokens_ends_with_length_and_sampling_is_reproducible(served: Served) -> None:
    client = served.client()
    args = {"model": served.name, "prompt": PROMPT, "max_tokens": 5, "temperature": 0.9, "top_p": 0.8, "seed": 3}
    first, again = client.completions.create(**args), client.completions.create(**args)
    want = expected(PROMPT, max_tokens=5, temperature=0.9, top_p=0.8, seed=3)
    assert first.choices[0].text == again.choices[0].text == want.text
    assert first.choices[0].finish_reason == "length" and first.usage is not None
    assert first.usage.completion_tokens == 5


def test_an_alias_and_a_version_in_the_model_field(served: Served) -> None:
    client = served.client()
    assert client.completions.create(model=f"{served.name}:canary", prompt=PROMPT, max_tokens=1).model == (
        f"{served.name}:1"
    )
    assert client.completions.create(model=f"{served.name}:2", prompt=PROMPT, max_tokens=1).model == f"{served.name}:2"


def test_models_list_shows_text_generation_models_and_their_aliases(served: Served) -> None:
    client = served.client()
    ids = {m.id: m for m in client.models.list()}
    assert {served.name, f"{served.name}:canary"} <= set(ids)
    assert not any(i.startswith("iris-") for i in ids)
    card = ids[served.name]
    assert card.object == "model" and card.owned_by == "kinfer" and card.created > 1_600_000_000
    assert client.models.retrieve(f"{served.name}:canary").id == f"{served.name}:canary"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    # the registry's own list is untouched
    r = requests.get(f"{served.base}/v1/models", headers={"Authorization": f"Bearer {served.key}"}, timeout=30)
    assert r.status_code == 200 and "models" in r.json()


def test_errors_in_openais_shape(served: Served) -> None:
    client = served.client()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert missing.value.type == "invalid_request_error"
    assert "GET /openai/v1/models" in str(missing.value), "the hint names the OpenAI list, not the registry's"
    with pytest.raises(openai.AuthenticationError) as bad_key:
        served.client(key="kinfer_" + "x" * 40).chat.completions.create(model=served.name, messages=MESSAGES)
    assert bad_key.value.status_code == 401 and bad_key.value.type == "authentication_error"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=served.name, prompt="word " * 10_000)
    assert long_prompt.value.code == "context_length_exceeded" and long_prompt.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model=served.name, prompt=PROMPT, max_tokens=513)
    assert too_many.value.param == "max_tokens"
    # the raw body: exactly OpenAI's four fields
    r = requests.post(
        f"{served.base}/openai/v1/chat/completions",
        json={"model": served.name, "messages": []},
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=30,
    )
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # a stream refused before it began is an HTTP status, not an event
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    # no key at all
    r = requests.post(f"{served.base}/v1/completions", json={"model": served.name, "prompt": "x"}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_a_token_limit_refuses_with_429_in_openais_shape(served: Served) -> None:
    """20 tokens a minute; each request reserves its prompt (5) + max_tokens at admission, so 8 parallel
    requests of max_tokens 5 admit exactly 2 (the attacker's finding: all were admitted and used 85x the limit)."""
    client = served.client(key=served.limited)

    def ask(_: int) -> Any:
        try:
            return client.completions.create(model=served.name, prompt=PROMPT, max_tokens=5)
        except openai.RateLimitError as exc:
            return exc

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    refused_ = [a for a in answers if isinstance(a, openai.RateLimitError)]
    assert len(refused_) == 6 and all(a.type == "tokens" and a.param == "tokens_per_minute" for a in refused_)
    assert [a.usage.total_tokens for a in answers if a not in refused_] == [10, 10]  # settled: 5 + 5 each
    with pytest.raises(openai.BadRequestError) as too_large:  # 5 + 30 reserved could never fit 20 a minute
        client.completions.create(model=served.name, prompt=PROMPT, max_tokens=30)
    assert too_large.value.param == "max_tokens" and "lower max_tokens" in too_large.value.message
    with pytest.raises(openai.RateLimitError) as refused:  # the 20 used fill the window
        client.completions.create(model=served.name, prompt=PROMPT, max_tokens=1)
    assert refused.value.status_code == 429 and refused.value.code == "rate_limit_exceeded"
    assert refused.value.type == "tokens" and refused.value.param == "tokens_per_minute"
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_usage_per_key_matches_the_tokens_the_answers_reported(served: Served) -> None:
    client = served.client(key=served.counted)
    answers = [
        client.completions.create(model=served.name, prompt=PROMPT, max_tokens=4),
        client.chat.completions.create(model=served.name, messages=MESSAGES, max_tokens=6),
    ]
    stream = client.chat.completions.create(
        model=served.name, messages=MESSAGES, max_tokens=7, stream=True, stream_options={"include_usage": True}
    )
    streamed = [c.usage for c in stream if c.usage is not None]
    usages = [a.usage for a in answers] + streamed
    prompt = sum(u.prompt_tokens for u in usages if u is not None)
    completion = sum(u.completion_tokens for u in usages if u is not None)
    assert completion == 4 + 6 + 7
    deadline = time.monotonic() + 15
    while True:  # the function moves its tally to PostgreSQL every couple of seconds
        r = requests.get(f"{served.base}/v1/usage", headers={"Authorization": f"Bearer {served.counted}"}, timeout=30)
        assert r.status_code == 200, r.text
        totals = r.json()["totals"]
        if totals["completion_tokens"] >= completion or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["requests"]) == (prompt, completion, 3)
    assert {row["model"] for row in r.json()["usage"]} == {served.name}


def test_a_client_that_leaves_mid_stream_leaves_the_server_serving(served: Served) -> None:
    with requests.post(
        f"{served.base}/v1/completions",
        json={"model": served.name, "prompt": PROMPT, "max_tokens": 512, "stream": True},
        headers={"Authorization": f"Bearer {served.key}"},
        stream=True,
        timeout=30,
    ) as r:
        first = next(r.iter_lines())
        assert first.startswith(b"data: {")
    answer = served.client().completions.create(model=served.name, prompt=PROMPT, max_tokens=3)
    assert answer.choices[0].text == expected(PROMPT, max_tokens=3).text


BOUND = 8  # GENERATION_MAX_IN_FLIGHT of the crowded gateway: each key may hold 4
FIRST_TOKEN_S = float(os.environ.get("KINFER_TEST_CROWD_TIMEOUT_S", "0.5"))  # its TRITON_TIMEOUT_S


@pytest.fixture(scope="module")
def crowded(served: Served, base_settings: Any, triton: Any) -> Iterator[str]:
    """A second gateway on the same Triton whose bound is small and whose first-token wait is shorter than
    tiny_lm takes to stream a few 512-token answers: admitted streams queue in Triton past it (4 or 5 of 8
    here). Long enough that the stream at the head of the queue gets its first token in time (a lone
    timeout is a 504 that counts, by design)."""
    settings = dataclasses.replace(
        base_settings,
        triton_url=triton.grpc_url,
        auth_required=True,
        generation_max_in_flight=BOUND,
        triton_timeout_s=FIRST_TOKEN_S,
        breaker_fail_max=1,  # any failure counted in this burst would open the circuit
    )
    with serve_gateway(free_port(), settings) as base:
        yield base


def test_parallel_streams_past_the_bound_are_refused_and_the_breaker_stays_closed(
    served: Served, crowded: str, triton: Any, redis_url: str
) -> None:
    """The attacker trial of issue 24, scaled down: 3x the bound of parallel 512-token streams from three keys.
    Each answer is a whole stream or a clear refusal (429 past the bound, 503 ``overloaded`` for one queued past
    its first-token timeout), never a 504; and the backend's shared circuit stays closed, so another tenant's
    iris request on the same Triton answers 200."""
    import redis

    from shared.backends.breaker import read_states

    shots = 3 * BOUND
    start = threading.Barrier(shots)
    found: list[tuple[int, str, str]] = [(0, "the request did not finish", "")] * shots

    def fire(i: int) -> None:
        key = served.crowd[i % len(served.crowd)]
        start.wait()
        r = requests.post(
            f"{crowded}/v1/chat/completions",
            json={
                "model": served.name,
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 512,
                "stream": True,
            },
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        found[i] = (r.status_code, r.text, r.headers.get("retry-after", ""))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(shots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    statuses = sorted(status for status, *_ in found)
    assert set(statuses) <= {200, 429, 503}, [(status, text[:200]) for status, text, _ in found if status != 200]
    assert 200 in statuses and 429 in statuses, statuses
    bounded = 0
    for status, text, retry_after in found:
        if status == 200:
            assert text.endswith("data: [DONE]\n\n") and '"error"' not in text
            continue
        error = json.loads(text)["error"]
        assert int(retry_after) >= 1
        if status == 429:
            assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded"), error
            bounded += "generations" in error["message"]
        else:
            assert (error["type"], error["code"]) == ("server_error", "overloaded"), error
    assert bounded, "the bound on generations in flight refused some"

    circuit = read_states(redis.Redis.from_url(redis_url), [triton.grpc_url])[triton.grpc_url]
    assert circuit.state == "closed", circuit
    r = requests.post(
        f"{served.base}/v1/infer",
        json={"model": served.iris, "input": {"data": [5.1, 3.5, 1.4, 0.2]}},
        headers={"Authorization": f"Bearer {served.key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
