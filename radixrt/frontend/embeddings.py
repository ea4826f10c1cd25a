"""OpenAI's embeddings API (/v1/embeddings): each input's embedding is the final hidden state
(after the model's last norm) of its last token, L2-normalized: last-token pooling, how
decoder embedding models (Qwen3-Embedding, gte-Qwen, e5-mistral) are read. Prompts share
the prefix cache with generation: only the tokens after a cached prefix are computed."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import numpy as np
from fastapi.responses import Response
from pydantic import Field

from radixrt.frontend.answers import UsageInfo
from radixrt.frontend.fields import _Request
from radixrt.frontend.responses import ResponseShape
from radixrt.ipc.messages import TextDelta
from radixrt.sampling_params import InvalidRequestError, SamplingParams

ROUTE = "/v1/embeddings"
MAX_INPUTS = 2048  # OpenAI's limit on one request's inputs


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)  # the first this many, renormalized
    # An opaque end-user id for abuse monitoring: nothing to do, as for chat.
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        p = self.input
        if isinstance(p, str):
            items: list[Any] = [p]
        elif p and isinstance(p[0], int):
            items = [p]
        else:
            items = list(p)
        if not items or any(len(i) == 0 for i in items):
            raise InvalidRequestError("input must not be empty (nor any of its items)", "input")
        if len(items) > MAX_INPUTS:
            raise InvalidRequestError(f"input may hold at most {MAX_INPUTS} items", "input")
        return items

    def check_dimensions(self, hidden_size: int) -> None:
        if self.dimensions is not None and self.dimensions > hidden_size:
            raise InvalidRequestError(f"dimensions must be at most {hidden_size}, this model's "
                                      "embedding size", "dimensions")


# Compute the prompt, generate nothing (the embedding comes from the prompt's last token).
EMBED_SAMPLING = SamplingParams(max_new_tokens=0, temperature=0.0)


class EmbeddingShape(ResponseShape):
    """/v1/embeddings: one `embedding` object per input, in input order; never streamed."""

    def __init__(self, api_id: str, model: str, request: EmbeddingRequest) -> None:
        super().__init__(api_id, model, EMBED_SAMPLING)
        self.request = request

    def choice(self, d: TextDelta, index: int, stream: bool) -> Any:
        assert d.embedding is not None, "an embedding request finished without its embedding"
        vector = np.asarray(d.embedding, dtype=np.float32)
        if self.request.dimensions is not None:  # Matryoshka: a prefix, renormalized
            vector = vector[: self.request.dimensions]
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        data: Any = vector.tolist()
        if self.request.encoding_format == "base64":  # little-endian float32, as OpenAI's
            data = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return {"object": "embedding", "index": index, "embedding": data}

    def chunk(self, choices: list[Any], usage: UsageInfo | None = None) -> Any:
        raise NotImplementedError  # never streamed

    def response(self, choices: list[Any], usage: UsageInfo) -> Response:
        body = {"object": "list", "data": sorted(choices, key=lambda c: c["index"]),
                "model": self.model, "usage": {"prompt_tokens": usage.prompt_tokens,
                                               "total_tokens": usage.prompt_tokens}}
        return Response(json.dumps(body), media_type="application/json")
