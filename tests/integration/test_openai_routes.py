"""The OpenAI-compatible routes through the local gateway (``kinfer serve --gateway`` under uvicorn), with the
official ``openai`` client unchanged, over real PostgreSQL, Redis and Triton serving the demo ``tiny_lm``.

Every expected completion is computed by the model's own pure functions (``models/src/tiny_lm.py`` with the
built ``bigrams.json``): greedy decoding is deterministic, so text, finish reason and token counts must match
exactly, streamed or not."""

from __future__ import annotations

import dataclasses
import importlib.util
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
    """The documented chat template."""
    return "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])


@dataclasses.dataclass
class Served:
    base: str
    name: str
    key: str
    key_id: str
    limited: str
    counted: str
    counted_id: str

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
    services.registry.create_model(  # not a text-generation model: not listed
        {
            "name": f"iris-{uuid.uuid4().hex[:6]}",
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
    reset_services(None)
    with serve_gateway(free_port(), settings) as base:
        yield Served(base, name, key, record["id"], limited, counted, counted_record["id"])


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
    client = served.client(key=served.limited)
    first = client.completions.create(model=served.name, prompt=PROMPT, max_tokens=30)  # 35 tokens > 20 a minute
    assert first.usage is not None and first.usage.total_tokens == 35
    with pytest.raises(openai.RateLimitError) as refused:
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
