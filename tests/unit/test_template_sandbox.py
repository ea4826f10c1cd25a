"""Chat templates render in a bounded child process (time, output, memory), exactly as
transformers' apply_chat_template renders them; tokenizing matches the tokenizer's encode."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.ipc.messages import TokenizeReq
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import InvalidRequestError, SamplingParams
from radixrt.tokenizer.template_sandbox import RenderJob, TemplateSandbox
from radixrt.tokenizer.tokenize import PromptTokenizer

CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3? Ünïcödé ✓"}]
LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def prompts(default_model_dir: Path, tok: PreTrainedTokenizerBase) -> Iterator[PromptTokenizer]:
    p = PromptTokenizer(ModelInfo.from_dir(default_model_dir, context_length=2048), tok)
    yield p
    p.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[TemplateSandbox]:
    s = TemplateSandbox("test", timeout_s=1.0)
    yield s
    s.close()


def job(template: str, max_chars: int = 100_000, **kw: object) -> RenderJob:
    return RenderJob(messages=[{"role": "user", "content": "hi"}], template=template,
                     max_chars=max_chars, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [
    {"add_generation_prompt": True},
    {"add_generation_prompt": False},
    {"add_generation_prompt": False, "continue_final_message": True},
])
def test_model_template_renders_as_transformers_does(prompts: PromptTokenizer,
                                                     tok: PreTrainedTokenizerBase,
                                                     options: dict) -> None:
    chat = CHAT if not options.get("continue_final_message") else [
        *CHAT, {"role": "assistant", "content": "The answer is"}]
    ours = prompts.apply_chat_template(chat, dict(options))
    theirs = tok.apply_chat_template(chat, tokenize=False, **options)
    assert ours == tok.encode(theirs, add_special_tokens=False)


def test_encode_matches_the_tokenizer(prompts: PromptTokenizer,
                                      tok: PreTrainedTokenizerBase) -> None:
    for text in ("Hello there", " leading space", "<|im_start|>user\nhi<|im_end|>", "ü✓ 日本"):
        assert prompts.encode(text) == tok.encode(text)
        assert prompts.encode(text, add_special_tokens=False) == tok.encode(
            text, add_special_tokens=False)


def test_output_bound(sandbox: TemplateSandbox) -> None:
    assert sandbox.render(job("{{ 'ab' * 10 }}")) == "ab" * 10
    with pytest.raises(InvalidRequestError, match="longer than 1000 characters"):
        sandbox.render(job("{{ 'a ' * 5000000 }}", max_chars=1000))
    with pytest.raises(InvalidRequestError, match="longer than 1000 characters"):
        sandbox.render(job("{% for i in range(100000) %}xy{% endfor %}", max_chars=1000))


def test_time_bound_and_recovery(sandbox: TemplateSandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(InvalidRequestError, match="longer than 1 s"):
        sandbox.render(job(LOOPS))
    assert time.monotonic() - t0 < 1.0 + 1.5  # the alarm, not the kill, ended it
    assert sandbox.render(job("{{ messages[0].content }}!")) == "hi!"


def test_memory_bound(sandbox: TemplateSandbox) -> None:
    with pytest.raises(InvalidRequestError, match="MiB|MemoryError"):
        sandbox.render(job("{% set x = 'a' * 10**10 %}{{ x|length }}"))
    assert sandbox.render(job("{{ 1 + 1 }}")) == "2"


def test_sandbox_blocks_escapes(sandbox: TemplateSandbox) -> None:
    with pytest.raises(InvalidRequestError, match="chat template failed"):
        sandbox.render(job("{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(InvalidRequestError, match="boom"):
        sandbox.render(job("{{ raise_exception('boom') }}"))


def test_request_template_and_size_checks(prompts: PromptTokenizer) -> None:
    ids = prompts.apply_chat_template(CHAT, {"chat_template": "{{ messages[-1].content }}"})
    assert prompts.tokenizer.decode(ids) == CHAT[-1]["content"]
    with pytest.raises(InvalidRequestError) as e:
        prompts.apply_chat_template(CHAT, {}, template="{{ 'a ' * 5000000 }}")
    assert "maximum context length is 2048 tokens" in str(e.value)
    with pytest.raises(InvalidRequestError) as e:
        prompts.apply_chat_template(CHAT, {}, template=LOOPS)
    assert e.value.param == "chat_template" and "took longer" in str(e.value)
    big = "a " * (prompts.max_prompt_chars // 2 + 1)
    for req in (TokenizeReq("r", prompt=big), TokenizeReq("r", messages=[
            {"role": "user", "content": big}])):
        with pytest.raises(InvalidRequestError, match="Please reduce the length"):
            prompts.check_size(req)
    with pytest.raises(InvalidRequestError, match="maximum context length"):
        prompts.check_size(TokenizeReq("r", input_ids=[5] * 2048, sampling=SamplingParams()))
