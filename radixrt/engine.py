"""radixrt.Engine: the server's processes without HTTP (like sglang.Engine / vllm.LLM).

    with Engine() as engine:                      # the default model
        out = engine.generate("The capital of France is", {"max_new_tokens": 8})
        print(out["text"], out["meta_info"]["cached_tokens"])
"""

from __future__ import annotations

import itertools
import logging
import uuid
from typing import Any

import numpy as np

from radixrt.backend import start_backend
from radixrt.config import build_engine_config
from radixrt.ipc.messages import SchedulerStats, TextDelta, TokenizeReq
from radixrt.model_info import ModelInfo
from radixrt.process_group import ProcessGroup
from radixrt.sampling_params import InvalidRequestError, SamplingParams

logger = logging.getLogger("radixrt")

PromptInput = str | list[int] | list[str] | list[list[int]]
ParamsInput = dict | SamplingParams | None


class EngineDeadError(RuntimeError):
    """A process of the engine died; the engine has stopped the others."""


class Engine:
    """The offline engine: the server's tokenizer, scheduler and worker processes, driven
    from this process instead of HTTP. Works from any entry point (script, python -c,
    notebook); use it as a context manager or call shutdown() (an unclosed one stops at exit).
    """

    def __init__(self, model_path: str | None = None, **options: Any) -> None:
        from radixrt.frontend.client import TokenizerClient

        self.config = build_engine_config(model_path, **options)
        self.model_info = ModelInfo.load(self.config)
        self.group = ProcessGroup()
        try:
            self.group.start("tokenizer", "tokenizer", self.config.log_level, self.model_info)
            self.worker = start_backend(self.group, self.config, self.model_info)
            self.group.wait_ready()
            self.client = TokenizerClient(self.group.endpoints, check=self._check_processes)
        except BaseException:
            self.group.shutdown()
            raise
        self._ids = itertools.count()
        self._closed = False

    # ------------------------------------------------------------------ generation
    def generate(self, prompt: PromptInput | None = None, sampling_params: ParamsInput |
                 list[ParamsInput] = None, input_ids: list[int] | list[list[int]] | None = None,
                 cache_salt: str | None = None) -> dict | list[dict]:
        """Generate for one prompt (str or token ids) or a batch (list of either).

        Returns {"text", "output_ids", "meta_info": {prompt_tokens, completion_tokens,
        cached_tokens, finish_reason, matched_stop[, output_token_logprobs][,
        input_token_logprobs (sampling param prompt_logprobs)]}} per prompt.
        """
        batch, single = _batch_of(prompt, input_ids)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(batch)
        if len(params) != len(batch):
            raise ValueError("sampling_params must be one dict or one per prompt")
        reqs = []
        for item, p in zip(batch, params):
            sp = SamplingParams.from_dict(p, self.model_info.sampling_defaults)
            rid = f"engine-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            if isinstance(item, str):
                reqs.append(TokenizeReq(rid, prompt=item, sampling=sp, cache_salt=cache_salt))
            else:
                reqs.append(TokenizeReq(rid, input_ids=list(item), sampling=sp,
                                        cache_salt=cache_salt))
        outs = self._run(reqs)
        return outs[0] if single else outs

    def encode(self, prompt: str | list[str] | None = None,
               input_ids: list[int] | list[list[int]] | None = None,
               cache_salt: str | None = None) -> np.ndarray:
        """Embeddings of one prompt (str or token ids) or a batch: [hidden] or [batch, hidden]
        float32, the last token's final hidden state, L2-normalized (as /v1/embeddings)."""
        batch, single = _batch_of(prompt, input_ids)
        reqs = []
        for item in batch:
            rid = f"engine-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            text, ids = (item, None) if isinstance(item, str) else (None, list(item))
            reqs.append(TokenizeReq(rid, prompt=text, input_ids=ids, embed=True,
                                    sampling=SamplingParams(max_new_tokens=0, temperature=0.0),
                                    cache_salt=cache_salt))
        vectors = np.stack([r["embedding"] for r in self._run(reqs)])
        return vectors[0] if single else vectors

    def chat(self, messages: list[dict], sampling_params: ParamsInput = None,
             cache_salt: str | None = None) -> dict:
        """One chat completion: the model's chat template is applied to messages."""
        sp = SamplingParams.from_dict(sampling_params, self.model_info.sampling_defaults)
        rid = f"engine-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        return self._run([TokenizeReq(rid, messages=messages, sampling=sp,
                                      cache_salt=cache_salt)])[0]

    def _run(self, reqs: list[TokenizeReq]) -> list[dict]:
        results = {r.rid: _Result() for r in reqs}
        for r in reqs:
            self.client.submit(r)
        try:
            for delta in self.client.iter_deltas(set(results)):
                results[delta.rid].add(delta)
        except KeyboardInterrupt:
            for r in reqs:
                self.client.abort(r.rid)
            raise
        for res in results.values():
            if res.error is not None:
                raise InvalidRequestError(res.error, res.error_param)
        return [results[r.rid].to_dict() for r in reqs]

    def _check_processes(self) -> None:
        """Called while waiting for answers: a dead process (a worker rank, the scheduler)
        means none will come. Stop every other process and say which one died."""
        dead = self.group.first_death()
        if dead is not None:
            name, code = dead
            self.shutdown()
            raise EngineDeadError(f"the {name} process died (exit code {code}); the engine "
                                  "has shut down")

    # ------------------------------------------------------------------ maintenance
    def flush_cache(self) -> int:
        """Drop the prefix cache once no request runs; returns the KV pages freed."""
        return self.client.flush_cache().pages_freed

    def get_stats(self) -> SchedulerStats:
        return self.client.stats()

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self.group.shutdown()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.shutdown()


def _batch_of(prompt: Any, input_ids: Any) -> tuple[list[Any], bool]:
    """(the prompts, each a str or an id list; whether one was given rather than a list)."""
    if (prompt is None) == (input_ids is None):
        raise ValueError("pass exactly one of prompt and input_ids")
    items = prompt if prompt is not None else input_ids
    single = isinstance(items, str) or (
        isinstance(items, list) and (not items or isinstance(items[0], int)))
    return ([items] if single else list(items)), single


class _Result:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.ids: list[int] = []
        self.logprobs: list[float] = []
        self.prompt_logprobs: list[float | None] | None = None
        self.embedding: np.ndarray | None = None
        self.meta: dict[str, Any] = {}
        self.error: str | None = None
        self.error_param: str | None = None

    def add(self, d: TextDelta) -> None:
        self.text.append(d.text)
        self.ids.extend(d.token_ids)
        if d.logprobs:
            self.logprobs.extend(e.logprob for e in d.logprobs)  # type: ignore[misc]
        if d.prompt_logprobs is not None:
            self.prompt_logprobs = [e.logprob for e in d.prompt_logprobs]
        if d.embedding is not None:
            self.embedding = d.embedding
        if d.error:
            self.error, self.error_param = d.error, d.error_param
        self.meta = {
            "prompt_tokens": d.prompt_tokens,
            "completion_tokens": d.completion_tokens,
            "cached_tokens": d.cached_tokens,
            "finish_reason": d.finish_reason,
            "matched_stop": d.matched_stop,
        }

    def to_dict(self) -> dict:
        meta = dict(self.meta)
        if self.logprobs:
            meta["output_token_logprobs"] = self.logprobs
        if self.prompt_logprobs is not None:  # the first prompt token's is None
            meta["input_token_logprobs"] = self.prompt_logprobs
        if self.embedding is not None:
            return {"embedding": self.embedding, "meta_info": meta}
        return {"text": "".join(self.text), "output_ids": self.ids, "meta_info": meta}
