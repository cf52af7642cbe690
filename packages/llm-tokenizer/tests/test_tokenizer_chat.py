"""Chat templates render as HF transformers' apply_chat_template(tokenize=False) does."""

from __future__ import annotations

import json

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


# ChatML whose assistant turns are wrapped in HF's {% generation %} markers (as SmolLM3 / the
# HF chat-templating docs write them); the header stays outside, the content and end inside.
GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi — what's 2+2? 你好"},
    {"role": "assistant", "content": "4, of course. 🙂"},
    {"role": "user", "content": "And  3+3?"},
    {"role": "assistant", "content": " 6\n\n(six)"},
]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_generation_blocks_render_and_mask_as_transformers(
    hf_byte_level, tmp_path, add_generation_prompt
):
    """Text, ids and assistant mask equal transformers' apply_chat_template(tokenize=True,
    return_assistant_tokens_mask=True) on the same tokenizer.json and template."""
    from transformers import AutoTokenizer

    hf_byte_level.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "eos_token": "<|im_end|>",
                "chat_template": GENERATION_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }
        )
    )
    reference = AutoTokenizer.from_pretrained(tmp_path)
    expected = reference.apply_chat_template(
        TWO_TURNS,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
    )
    ours = Tokenizer.from_file(tmp_path)
    text, spans = ours.render_chat(TWO_TURNS, add_generation_prompt=add_generation_prompt)
    assert text == reference.apply_chat_template(
        TWO_TURNS, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert [text[a:b] for a, b in spans] == ["4, of course. 🙂<|im_end|>", " 6\n\n(six)<|im_end|>"]
    ids, mask = ours.encode_chat(TWO_TURNS, add_generation_prompt=add_generation_prompt)
    assert ids == list(expected["input_ids"])
    assert mask == list(expected["assistant_masks"])
    assert 0 < sum(mask) < len(mask)


def test_generation_blocks_render_plainly_without_tracking():
    ours = Tokenizer.train(["x"], 258, special_tokens=["<|im_start|>", "<|im_end|>"])
    ours.chat_template = GENERATION_TEMPLATE
    text = ours.apply_chat_template(TWO_TURNS)
    assert "{% generation %}" not in text and text.count("<|im_start|>assistant\n") == 2
