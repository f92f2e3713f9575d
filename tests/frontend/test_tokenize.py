"""vLLM's POST /tokenize and POST /detokenize against the real SmolLM2 tokenizer, checked against transformers'
(the `tokenizer` fixture): the same ids, token strings and text; chat messages rendered as a chat completion renders
them (the same count as its prompt_tokens); bad input a 400 naming the field, in OpenAI's error shape."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fake_engine import MAX_MODEL_LEN, MODEL
from helpers import create_key_in_database

TEXTS = [
    "Hello world",
    "",
    "  leading spaces, tabs\tand\nnewlines  ",
    "naïve café — 東京 🙂 <|im_start|>user",  # accents, CJK, an emoji (byte-level pieces), a special token
]
CHATS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ],
]


@pytest.fixture
def root(app) -> httpx.Client:
    with httpx.Client(base_url=app.base_url, timeout=30) as client:
        yield client


def tokenize(root: httpx.Client, **body) -> dict:
    response = root.post("/tokenize", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("text", TEXTS)
def test_a_prompt_is_tokenized_as_transformers_tokenizes_it(root, tokenizer, text):
    answer = tokenize(root, prompt=text)
    expected = tokenizer(text, add_special_tokens=True)["input_ids"]
    assert answer == {"count": len(expected), "max_model_len": MAX_MODEL_LEN, "tokens": expected}  # no token_strs
    assert (
        tokenize(root, prompt=text, add_special_tokens=False)["tokens"]
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    with_strings = tokenize(root, prompt=text, return_token_strs=True)
    assert with_strings["tokens"] == expected
    assert with_strings["token_strs"] == tokenizer.convert_ids_to_tokens(expected)
    if text == TEXTS[0]:
        assert with_strings["token_strs"] == ["Hello", "Ġworld"]  # the vocabulary's spelling, not decoded text


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False, None])
def test_messages_are_rendered_with_the_chat_template_as_transformers_renders_them(
    root, tokenizer, messages, add_generation_prompt
):
    body = {"messages": messages, "return_token_strs": True}
    if add_generation_prompt is not None:
        body["add_generation_prompt"] = add_generation_prompt
    answer = tokenize(root, **body)
    rendered = tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt is not False, tokenize=False
    )
    expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]  # vLLM's default for messages
    assert answer["tokens"] == expected and answer["count"] == len(expected)
    assert answer["token_strs"] == tokenizer.convert_ids_to_tokens(expected)
    assert rendered.endswith("<|im_start|>assistant\n") == (add_generation_prompt is not False)


def test_the_count_of_messages_is_the_prompt_tokens_a_chat_completion_reports(root, client):
    for messages in CHATS:
        usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2).usage
        assert tokenize(root, messages=messages)["count"] == usage.prompt_tokens, messages


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_messages_with_tools_count_as_a_chat_completion_offering_them_counts(root, client):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with_tools = tokenize(root, messages=messages, tools=[WEATHER_TOOL])
    assert with_tools["count"] > tokenize(root, messages=messages)["count"] + 20  # the tool prompt is in it
    completion = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], max_tokens=2)
    assert with_tools["count"] == completion.usage.prompt_tokens


def test_the_developer_role_renders_as_system_as_in_chat_completions(root):
    developer = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert tokenize(root, messages=developer) == tokenize(root, messages=system)


@pytest.mark.parametrize("text", TEXTS)
def test_detokenize_gives_back_the_text_as_transformers_decodes_it(root, tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    response = root.post("/detokenize", json={"model": MODEL, "tokens": ids})
    assert response.status_code == 200, response.text
    assert response.json() == {"prompt": tokenizer.decode(ids)}
    assert response.json()["prompt"] == text  # byte-level BPE round-trips exactly


def test_detokenize_keeps_special_tokens_and_joins_partial_characters(root, tokenizer):
    rendered = tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    emoji = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(emoji) > 1  # one character, several byte-level tokens
    response = root.post("/detokenize", json={"model": MODEL, "tokens": ids + emoji})
    assert response.json()["prompt"] == rendered + "🙂"
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")


def error_of(response: httpx.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"prompt": "hi", "messages": CHATS[0]}, "messages", "not both"),
        ({}, "prompt", "prompt (text) or messages"),
        ({"prompt": "hi", "temperature": 0}, "temperature", "Unrecognized request argument supplied: temperature"),
        ({"prompt": 5}, "prompt", "string"),
        ({"prompt": "hi", "add_generation_prompt": True}, "add_generation_prompt", "only applies to messages"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "'user'"),
        ({"messages": CHATS[0], "continue_final_message": True}, "continue_final_message", "accepted: null, false"),
        ({"messages": CHATS[0], "chat_template": "{{ 1 }}"}, "chat_template", "accepted: null"),
        ({"messages": CHATS[0], "tools": [{"type": "function"}]}, "tools.0.function", "Field required"),
        ({"prompt": "hi", "tools": [WEATHER_TOOL]}, "tools", "only apply to messages"),
        ({"prompt": "hi", "return_token_strs": "maybe"}, "return_token_strs", "boolean"),
    ],
)
def test_bad_tokenize_input_is_a_400_naming_the_field(root, body, param, words):
    error = error_of(root.post("/tokenize", json={"model": MODEL, **body}))
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert words in error["message"], error


def test_the_neutral_values_of_vllms_chat_fields_are_accepted(root, tokenizer):
    neutral = {"continue_final_message": False, "chat_template": None, "chat_template_kwargs": {}, "tools": []}
    assert tokenize(root, messages=CHATS[0], **neutral) == tokenize(root, messages=CHATS[0])


@pytest.mark.parametrize("tokens", [[-1], [1, 2, 49152], [2**70], [1, "two"]])
def test_a_token_id_outside_the_vocabulary_is_a_400_naming_tokens(root, tokens):
    error = error_of(root.post("/detokenize", json={"model": MODEL, "tokens": tokens}))
    assert error["param"].startswith("tokens"), error
    if "two" not in tokens:
        assert "not in the vocabulary" in error["message"] and "0 to 49151" in error["message"], error


def test_detokenize_refuses_unknown_fields_and_a_missing_tokens(root):
    error = error_of(root.post("/detokenize", json={"model": MODEL, "tokens": [1], "skip_special_tokens": True}))
    assert error["param"] == "skip_special_tokens" and error["message"].startswith("Unrecognized request argument")
    assert error_of(root.post("/detokenize", json={"model": MODEL}))["param"] == "tokens"


@pytest.mark.parametrize("path, body", [("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})])
def test_an_unknown_model_is_a_404_as_elsewhere(root, path, body):
    error = error_of(root.post(path, json={"model": "nope", **body}), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found", error


def test_with_auth_on_tokenize_and_detokenize_need_a_key(start_app):
    secured = start_app(auth=True)
    key = asyncio.run(create_key_in_database(secured.database_url, "alice"))
    for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [1]})):
        refused = httpx.post(f"{secured.base_url}{path}", json={"model": MODEL, **body}, timeout=30)
        assert error_of(refused, 401)["code"] == "missing_api_key"
        allowed = httpx.post(
            f"{secured.base_url}{path}",
            json={"model": MODEL, **body},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert allowed.status_code == 200, allowed.text
