"""Hop frontend / Engine ⇄ tokenizer process: requests as text or ids in, text deltas out."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radixrt.sampling_params import SamplingParams


class FrontendTokenizerMsg:
    """Base of every message on the frontend ⇄ tokenizer hop."""


@dataclass
class TokenizeReq(FrontendTokenizerMsg):
    """A generation request as the frontend sees it (text, chat messages or token ids)."""

    rid: str
    prompt: str | None = None
    messages: list[dict] | None = None  # chat messages; the tokenizer applies the template
    input_ids: list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    cache_salt: str | None = None
    chat_template_kwargs: dict | None = None
    add_generation_prompt: bool = True  # end a chat prompt with the assistant's turn opener
    continue_final_message: bool = False  # leave the final chat message open instead
    chat_template: str | None = None  # a request's own template (only when the server trusts it)
    echo: bool = False  # the first delta carries the prompt's text (prompt_text)
    embed: bool = False  # the prompt's embedding instead of generated text (GenerateReq.embed)


@dataclass
class TokenLogprob:
    """One token's logprob with its text and raw bytes (OpenAI logprobs entries), so the
    frontend needs no tokenizer of its own. `top` holds the alternatives (no `top` each).
    logprob is None only for a prompt's first token, which nothing predicts."""

    token_id: int
    token: str
    bytes: list[int]
    logprob: float | None
    top: list[TokenLogprob] | None = None


@dataclass
class TextDelta:
    """Incremental output for one request (one per step while it runs, then a final one)."""

    rid: str
    text: str  # new text since the last delta (never a broken UTF-8 char or a stop-string prefix)
    token_ids: list[int]  # new output ids since the last delta
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    matched_stop: str | int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # of token_ids, when the request asked
    error: str | None = None  # set with finished=True when the request was refused
    error_param: str | None = None
    # In the first delta only: the prompt's text (TokenizeReq.echo) and, when asked
    # (SamplingParams.prompt_logprobs), one entry per prompt token.
    prompt_text: str | None = None
    prompt_logprobs: list[TokenLogprob] | None = None
    embedding: np.ndarray | None = None  # float32 [hidden], L2-normalized (TokenizeReq.embed)


@dataclass
class TextDeltaBatch(FrontendTokenizerMsg):
    """Every delta of one scheduler step (or one refusal): one message, not one per request."""

    deltas: list[TextDelta]


@dataclass
class EncodeReq(FrontendTokenizerMsg):
    """/tokenize: a prompt or chat messages to token ids, nothing generated."""

    rid: str
    prompt: str | None = None
    messages: list[dict] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict | None = None


@dataclass
class EncodeDone(FrontendTokenizerMsg):
    """The answer to an EncodeReq: the ids, or the refusal."""

    rid: str
    ids: list[int] = field(default_factory=list)
    error: str | None = None
    error_param: str | None = None


@dataclass
class DecodeReq(FrontendTokenizerMsg):
    """/detokenize: token ids to text."""

    rid: str
    ids: list[int]


@dataclass
class DecodeDone(FrontendTokenizerMsg):
    """The answer to a DecodeReq."""

    rid: str
    text: str = ""
    error: str | None = None
    error_param: str | None = None
