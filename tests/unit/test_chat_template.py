"""Chat prompts in the tokenizer process: the developer role, assistant prefill
(continue_final_message), add_generation_prompt, and stop strings kept in the output."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.ipc.messages import TokenizeReq, TokenOut, TokenOutBatch
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError, SamplingParams
from radixrt.tokenizer.process import TokenizerManager
from radixrt.tokenizer.tokenize import PromptTokenizer


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def prompts(default_model_dir: Path, tok: PreTrainedTokenizerBase) -> PromptTokenizer:
    return PromptTokenizer(ModelInfo.from_dir(default_model_dir), tok)


def render(p: PromptTokenizer, messages: list[dict], **kw: bool) -> str:
    return p.tokenizer.decode(p.apply_chat_template(messages, **kw))


def test_developer_role_is_system_where_the_template_lacks_it(prompts: PromptTokenizer) -> None:
    assert not prompts.template_knows_developer  # SmolLM2's ChatML template
    dev = render(prompts, [{"role": "developer", "content": "Be terse."},
                           {"role": "user", "content": "hi"}])
    system = render(prompts, [{"role": "system", "content": "Be terse."},
                              {"role": "user", "content": "hi"}])
    assert dev == system
    assert "<|im_start|>system\nBe terse.<|im_end|>" in dev and "developer" not in dev
    # The template's default system prompt is not added next to it.
    assert "SmolLM" not in dev


def test_developer_role_kept_where_the_template_knows_it(default_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'developer' %}[DEV]"
                         "{% else %}[{{ m['role'] }}]{% endif %}{{ m['content'] }}{% endfor %}")
    p = PromptTokenizer(ModelInfo.from_dir(default_model_dir), tok)
    assert p.template_knows_developer
    assert render(p, [{"role": "developer", "content": "x"}]) == "[DEV]x"


def test_reasoning_content_reaches_the_template(default_model_dir: Path) -> None:
    """An assistant message's reasoning_content (chat completions; a Responses reasoning
    item) is the template's to render, as a thinking model's does."""
    from radixrt.frontend.protocol import ChatMessage

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{% if m.reasoning_content %}"
                         "<think>{{ m.reasoning_content }}</think>{% endif %}{{ m['content'] }}"
                         "{% endfor %}")
    p = PromptTokenizer(ModelInfo.from_dir(default_model_dir), tok)
    msg = ChatMessage.model_validate({"role": "assistant", "content": "Hi.",
                                      "reasoning_content": "greet"})
    assert render(p, [{"role": "user", "content": "x"}, msg.to_dict()]) == \
        "[user]x[assistant]<think>greet</think>Hi."
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="assistant messages only"):
        ChatMessage.model_validate({"role": "user", "content": "x", "reasoning_content": "r"})


def test_continue_final_message(prompts: PromptTokenizer) -> None:
    chat = [{"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"}]
    text = render(prompts, chat, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nThe colour is")  # open: no <|im_end|>
    closed = render(prompts, chat, add_generation_prompt=False)
    assert closed.endswith("The colour is<|im_end|>\n")
    opener = render(prompts, chat[:1])
    assert opener.endswith("<|im_start|>assistant\n")
    assert render(prompts, chat[:1], add_generation_prompt=False).endswith("<|im_end|>\n")


@pytest.mark.parametrize("messages, kw, param", [
    ([{"role": "user", "content": "x"}], {"add_generation_prompt": True,
                                          "continue_final_message": True},
     "add_generation_prompt"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}],
     {"add_generation_prompt": False, "continue_final_message": True}, "messages"),
])
def test_continue_final_message_errors(prompts: PromptTokenizer, messages: list[dict],
                                       kw: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        prompts.apply_chat_template(messages, **kw)
    assert info.value.param == param


def test_template_kwargs_set_the_chat_flags_as_vllm_does(prompts: PromptTokenizer) -> None:
    """add_generation_prompt / continue_final_message inside chat_template_kwargs act as the
    request fields (the hardening issue: they used to collide with ours); the server's own
    arguments stay refused."""
    chat = [{"role": "user", "content": "x"}]
    assert prompts.render_chat(chat, {"add_generation_prompt": False}) == \
        prompts.render_chat(chat, add_generation_prompt=False)
    assert prompts.render_chat(chat, {"add_generation_prompt": False}) != prompts.render_chat(chat)
    prefill = [*chat, {"role": "assistant", "content": "Sure,"}]
    assert prompts.render_chat(prefill, {"continue_final_message": True}).endswith("Sure,")
    with pytest.raises(InvalidRequestError) as info:
        prompts.apply_chat_template(chat, {"tokenize": True})
    assert info.value.param == "chat_template_kwargs" and "tokenize" in str(info.value)


def test_tokenize_req_carries_the_chat_flags(default_model_dir: Path,
                                             tok: PreTrainedTokenizerBase) -> None:
    m = TokenizerManager(ModelInfo.from_dir(default_model_dir), PromptTokenizer(
        ModelInfo.from_dir(default_model_dir), tok))
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure,"}]
    [gen], _ = m.handle_tokenize(TokenizeReq("c1", messages=chat, add_generation_prompt=False,
                                             continue_final_message=True))
    assert tok.decode(gen.input_ids).endswith("<|im_start|>assistant\nSure,")


@pytest.mark.parametrize("keep, expect", [(False, " The capital is "),
                                          (True, " The capital is Paris")])
def test_include_stop_str_in_output(default_model_dir: Path, tok: PreTrainedTokenizerBase,
                                    keep: bool, expect: str) -> None:
    info = ModelInfo.from_dir(default_model_dir)
    m = TokenizerManager(info, PromptTokenizer(info, tok))
    sp = SamplingParams(max_new_tokens=40, stop=["Paris"], include_stop_str_in_output=keep)
    m.handle_tokenize(TokenizeReq("s", prompt="Hello", sampling=sp))
    text = ""
    for i in tok.encode(" The capital is Paris. Yes"):
        _, deltas = m.handle_token_outs(TokenOutBatch([TokenOut("s", [i])]))
        text += "".join(d.text for d in deltas)
        if deltas and deltas[-1].finished:
            assert deltas[-1].matched_stop == "Paris"
            break
    assert text == expect
