"""Chat templates render as HF transformers' apply_chat_template(tokenize=False) does."""

from __future__ import annotations

import pytest
from llm_tokenizer import Tokenizer, TokenizerError
from llm_tokenizer.chat import DEFAULT_CHAT_TEMPLATE
from transformers import PreTrainedTokenizerFast

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}\n"
    "{% endfor %}"
    "{{ messages | tojson }}"
)
MESSAGES = [
    {"role": "system", "content": "  Be brief. "},
    {"role": "user", "content": "Hi — what's 2+2? 你好"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Thanks"},
]


@pytest.mark.parametrize("template", [DEFAULT_CHAT_TEMPLATE, LLAMA3_TEMPLATE, STRICT_TEMPLATE])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_matches_transformers(hf_byte_level, template, add_generation_prompt):
    messages = MESSAGES[1:] if template is STRICT_TEMPLATE else MESSAGES
    reference = PreTrainedTokenizerFast(
        tokenizer_object=hf_byte_level,
        bos_token="<|im_start|>",
        eos_token="<|endoftext|>",
        chat_template=template,
    )
    expected = reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    ours = Tokenizer.train(
        ["x"], 258, special_tokens=["<|im_start|>", "<|endoftext|>"], eos_token="<|endoftext|>"
    )
    ours.bos_token, ours.chat_template = "<|im_start|>", template
    assert (
        ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    )


def test_raise_exception_is_a_tokenizer_error():
    ours = Tokenizer.train(["x"], 256)
    ours.chat_template = STRICT_TEMPLATE
    with pytest.raises(TokenizerError, match="roles must alternate"):
        ours.apply_chat_template(MESSAGES)
