"""The official `openai` Python client, unmodified, against our OpenAI-compatible endpoints:
listing models, a completion, a chat completion, both streamed, the `attribution` object
beside OpenAI's fields, and an error the client raises as its own exception type."""

import time

import openai
import pytest

from test_export import publish_example


def train(server, tmp_path):
    """A tiny byte-level model trained on the example Datanet, with a span index over it."""
    publish_example(server, tmp_path)
    server.json("POST", "/v1/datanets/kitchen-tips/versions/1/indexes", {"tokenizer": "bytes"},
                token=server.admin, expect=202)
    job = server.json("POST", "/v1/models", {
        "datanet": "kitchen-tips", "version": 1, "steps": 20, "seq_len": 16, "batch_size": 4,
        "hidden": 32, "heads": 2, "layers": 1, "seed": 5}, token=server.admin, expect=202)
    deadline = time.time() + 300
    while True:
        status = server.json("GET", f"/v1/jobs/{job['id']}", token=server.admin)
        if status["state"] in ("succeeded", "failed", "cancelled"):
            break
        assert time.time() < deadline, status
        time.sleep(0.1)
    assert status["state"] == "succeeded", status
    return status["result"]["id"]


@pytest.fixture
def client_and_model(server, tmp_path):
    model = train(server, tmp_path)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin, max_retries=0)
    return client, model


def test_the_openai_client_lists_completes_chats_and_streams(client_and_model):
    client, model = client_and_model
    ids = [m.id for m in client.models.list()]
    assert model in ids

    done = client.completions.create(model=model, prompt="Salt pasta", max_tokens=12,
                                     temperature=0.7, seed=9)
    assert done.object == "text_completion"
    assert done.choices[0].finish_reason in ("stop", "length")
    assert 1 <= done.usage.completion_tokens <= 12
    assert done.usage.prompt_tokens == len("Salt pasta")
    # Our extension rides beside OpenAI's fields.
    attribution = done.model_extra["attribution"]
    assert attribution["status"] == "complete"
    assert attribution["parts"][0]["datanet"] == "kitchen-tips"
    assert attribution["parts"][0]["record"].startswith("0x")

    # Streamed with the same seed: the same text, chunk by chunk, usage at the end.
    pieces, usage = [], None
    for chunk in client.completions.create(model=model, prompt="Salt pasta", max_tokens=12,
                                           temperature=0.7, seed=9, stream=True,
                                           stream_options={"include_usage": True}):
        pieces.extend(c.text for c in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(pieces) == done.choices[0].text
    assert usage.completion_tokens == done.usage.completion_tokens

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "A tip, please."}],
        max_tokens=10, temperature=0)
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    streamed = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "A tip, please."}],
        max_tokens=10, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == chat.choices[0].message.content


def test_the_openai_client_raises_our_errors_as_its_own(client_and_model):
    client, model = client_and_model
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    assert "no-such-model" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=10**6)
    assert bad.value.body["param"] == "max_tokens"
    assert "context" in bad.value.message
