"""The real stack (`llmserve serve`: Triton, SmolLM2, the web UI as `make test` builds it): /tokenize counts chat
messages as the real engine counts the prompt a chat completion sends it, /detokenize gives the text back; an
unknown path is a 404 whatever the method, a known one with another method a 405 with Allow, and the UI keeps / and
its assets. tests/frontend/test_tokenize.py and test_unknown_paths.py ask the same in process, in more detail."""

from __future__ import annotations

import re

import httpx
from openai import OpenAI

from stack import MODEL

CHATS = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ],
]


def test_the_count_of_messages_is_the_engines_prompt_tokens_and_detokenize_inverts_tokenize(stack, tokenizer):
    client = OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        for messages in CHATS:
            usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1).usage
            answer = http.post("/tokenize", json={"model": MODEL, "messages": messages})
            assert answer.status_code == 200, answer.text
            assert answer.json()["count"] == usage.prompt_tokens, messages
            rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            assert answer.json()["tokens"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]
            text = http.post("/detokenize", json={"model": MODEL, "tokens": answer.json()["tokens"]})
            assert text.json() == {"prompt": rendered}


def test_unknown_paths_are_404_known_ones_405_and_the_ui_keeps_its_files(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as http:
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            for path in ("/nope", "/v1/nope", "/v1/responses/x/y"):
                missing = http.request(method, path)
                assert missing.status_code == 404, (method, path, missing.text)
                assert missing.json()["error"]["message"] == f"No route for {method} {path}."
        models = http.delete("/v1/models")
        assert models.status_code == 405 and models.headers["allow"] == "GET", models.headers
        assert http.get("/detokenize").headers["allow"] == "POST"
        page = http.get("/")
        assert page.status_code == 200 and "<!doctype html>" in page.text.lower(), page.text[:300]
        asset = re.search(r'src="\.?(/assets/[^"]+\.js)"', page.text)
        assert asset, page.text
        assert http.get(asset.group(1)).status_code == 200
