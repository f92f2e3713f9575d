"""The prompt of a chat with tools: a template that reads `tools` renders them itself, exactly as transformers'
apply_chat_template renders the same template (tools=, assistant tool_calls with arguments as objects, tool
messages); SmolLM2's own template, which knows no tools, gets the Hermes format (test_tool_calls.py)."""

from __future__ import annotations

import json
import shutil

from frontend_api.openai.protocol import ChatMessage
from frontend_api.openai.tokenization import load_model_tokenizer
from frontend_api.openai.tool_calls import template_messages
from frontend_api.openai.tool_parsers import HermesToolParser

# A template of the Qwen 2.5 kind, reduced: it reads tools, tool_calls and tool messages.
TOOL_TEMPLATE = """{%- if tools %}<|im_start|>system
Tools:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{{ message.content }}
{%- for call in message.tool_calls %}
<tool_call>{{ {"name": call.function.name, "arguments": call.function.arguments} | tojson }}</tool_call> {{ call.id }}
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>tool {{ message.tool_call_id }}
{{ message.content }}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
MESSAGES = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
]


def test_a_template_with_tools_renders_them_as_transformers_does(checkpoint_dir, tmp_path):
    from transformers import AutoTokenizer

    shutil.copy(checkpoint_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((checkpoint_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": TOOL_TEMPLATE}))
    ours = load_model_tokenizer(tmp_path)
    assert ours.template_knows_tools
    rendered = template_messages(
        [ChatMessage.model_validate(m) for m in MESSAGES], TOOLS, HermesToolParser(), native=True
    )
    prompt = ours.render_chat(rendered, TOOLS)

    reference = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)
    as_transformers_documents = [
        MESSAGES[0],
        {
            **MESSAGES[1],
            "content": "",
            "tool_calls": [
                {**MESSAGES[1]["tool_calls"][0], "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        MESSAGES[2],
    ]
    expected = reference.apply_chat_template(
        as_transformers_documents, tools=TOOLS, chat_template=TOOL_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert prompt == expected
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt and "tool call_1\n18 C" in prompt


def test_smollm2s_template_knows_no_tools(checkpoint_dir):
    assert not load_model_tokenizer(checkpoint_dir).template_knows_tools
