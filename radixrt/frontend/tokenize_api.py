"""/tokenize and /detokenize (vLLM's shapes): the tokenizer process answers, nothing runs on
the model."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from pydantic import BaseModel, Field

from radixrt.frontend.client import AsyncTokenizerClient
from radixrt.frontend.errors import APIError
from radixrt.frontend.protocol import ChatMessage, _Request, generation_prompt
from radixrt.ipc.messages import DecodeDone, DecodeReq, EncodeDone, EncodeReq
from radixrt.sampling_params import InvalidRequestError


class TokenizeRequest(_Request):
    """Either `prompt` (add_special_tokens defaults to true) or chat `messages` rendered by the
    chat template (add_special_tokens defaults to false: the template holds them)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool | None = None
    add_generation_prompt: bool | None = None  # chat: default true unless continuing
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    def to_req(self) -> EncodeReq:
        rid = f"tok-{uuid.uuid4().hex}"
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of prompt, messages", "prompt")
        if self.prompt is not None:
            if self.continue_final_message or self.add_generation_prompt is not None or \
                    self.chat_template_kwargs is not None:
                raise InvalidRequestError("add_generation_prompt, continue_final_message and "
                                          "chat_template_kwargs apply to messages only",
                                          "prompt")
            return EncodeReq(rid, prompt=self.prompt, add_special_tokens=(
                True if self.add_special_tokens is None else self.add_special_tokens))
        add_gen = generation_prompt(self.add_generation_prompt, self.continue_final_message)
        return EncodeReq(rid, messages=[m.to_dict() for m in self.messages or []],
                         add_special_tokens=bool(self.add_special_tokens),
                         add_generation_prompt=add_gen,
                         continue_final_message=self.continue_final_message,
                         chat_template_kwargs=self.chat_template_kwargs)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


async def ask_tokenizer(client: AsyncTokenizerClient, req: EncodeReq | DecodeReq
                        ) -> EncodeDone | DecodeDone:
    """The tokenizer's answer; its refusal as a 400, no answer in time as a 503."""
    try:
        done = await client.call(req)
    except asyncio.TimeoutError:
        raise APIError(503, "The tokenizer did not answer in time; retry later.",
                       "service_unavailable", headers={"Retry-After": "1"}) from None
    if done.error is not None:
        raise APIError(400, done.error, param=done.error_param)
    return done
