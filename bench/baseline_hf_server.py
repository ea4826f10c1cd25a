"""The baseline: a plain transformers server, what one writes without an inference engine.

AutoModelForCausalLM + generate() behind a minimal OpenAI-compatible API (FastAPI + uvicorn):
/v1/chat/completions and /v1/completions (streaming or not), /v1/models, /health. One request
runs at a time behind a lock (generate() has no batching across requests); streaming goes
through TextIteratorStreamer, which releases text a word at a time. No KV reuse across
requests, so usage always reports cached_tokens 0. Greedy when temperature is 0; ignore_eos
maps to min_new_tokens = max_tokens. stop, n, logprobs and penalties are not supported.

    python -m bench.baseline_hf_server --model DIR --port 8001 [--dtype float32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _StopOnEvent(StoppingCriteria):
    """Ends generate() when the client went away, so the lock is not held for nothing."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> bool:
        return self.event.is_set()


@dataclass
class _Job:
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    ignore_eos: bool


class BadRequest(ValueError):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "code": status}}, status_code=status)


def create_app(model_dir: str, dtype: str = "float32", served_model_name: str = "default") -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[dtype])
    model.eval()
    context_length = int(getattr(model.config, "max_position_embeddings", 2048))
    lock = asyncio.Lock()
    app = FastAPI(title="HF baseline")

    def job_from(body: dict[str, Any], chat: bool) -> _Job:
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                ids = tokenizer(prompt)["input_ids"]
            elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
                ids = list(prompt)
            else:
                raise BadRequest("prompt must be a string or a list of token ids")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 256)
        if max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1")
        if len(ids) + max_tokens > context_length:
            raise BadRequest(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds "
                             f"the context length {context_length}")
        temperature = body.get("temperature")
        return _Job(input_ids=ids, max_tokens=max_tokens,
                    temperature=1.0 if temperature is None else float(temperature),
                    top_p=float(body.get("top_p") or 1.0), ignore_eos=bool(body.get("ignore_eos")))

    async def run(job: _Job) -> AsyncIterator[str | dict[str, Any]]:
        """Text pieces as generate() produces them, then a dict with the usage."""
        async with lock:  # one generate() at a time: this baseline has no batching
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            stop = threading.Event()
            result: dict[str, Any] = {}
            kwargs: dict[str, Any] = {
                "input_ids": torch.tensor([job.input_ids]),
                "attention_mask": torch.ones(1, len(job.input_ids), dtype=torch.long),
                "max_new_tokens": job.max_tokens, "streamer": streamer,
                "stopping_criteria": StoppingCriteriaList([_StopOnEvent(stop)]),
                "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
            }
            if job.temperature > 0:
                kwargs.update(do_sample=True, temperature=job.temperature, top_p=job.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if job.ignore_eos:
                kwargs["min_new_tokens"] = job.max_tokens  # EOS masked until max_tokens

            def target() -> None:
                try:
                    with torch.inference_mode():
                        out = model.generate(**kwargs)
                    result["completion_tokens"] = int(out.shape[1]) - len(job.input_ids)
                except BaseException as e:  # surfaced to the client below
                    result["error"] = f"{type(e).__name__}: {e}"
                    streamer.end()

            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            try:
                it = iter(streamer)
                while True:
                    piece = await asyncio.to_thread(next, it, None)
                    if piece is None:
                        break
                    if piece:
                        yield piece
                await asyncio.to_thread(thread.join)
                if "error" in result:
                    raise RuntimeError(result["error"])
                n = result["completion_tokens"]
                yield {"prompt_tokens": len(job.input_ids), "completion_tokens": n,
                       "finish_reason": "length" if n >= job.max_tokens else "stop"}
            finally:
                stop.set()  # client gone or error: end generate() before releasing the lock
                await asyncio.to_thread(thread.join)

    def usage(u: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
                "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": 0}}

    async def handle(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
            job = job_from(body, chat)
        except (BadRequest, ValueError, TypeError) as e:
            return _error(400, str(e))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        name = body.get("model") or served_model_name

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else (
                    {"content": text} if text is not None else {})
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

        if not body.get("stream"):
            parts, u = [], {}
            async for item in run(job):
                if isinstance(item, dict):
                    u = item
                else:
                    parts.append(item)
            text = "".join(parts)
            c: dict[str, Any] = {"index": 0, "finish_reason": u["finish_reason"]}
            if chat:
                c["message"] = {"role": "assistant", "content": text}
            else:
                c.update(text=text, logprobs=None)
            return {"id": rid, "object": obj, "created": created, "model": name,
                    "choices": [c], "usage": usage(u)}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[str]:
            def sse(choices: list[dict[str, Any]], **extra: Any) -> str:
                chunk = {"id": rid, "object": f"{obj}.chunk" if chat else obj,
                         "created": created, "model": name, "choices": choices, **extra}
                return f"data: {json.dumps(chunk)}\n\n"

            if chat:
                yield sse([choice(None, None, first=True)])
            try:
                async for item in run(job):
                    if isinstance(item, dict):
                        yield sse([choice(None if chat else "", item["finish_reason"])])
                        if include_usage:
                            yield sse([], usage=usage(item))
                    else:
                        yield sse([choice(item, None)])
            except RuntimeError as e:
                yield f"data: {json.dumps({'error': {'message': str(e), 'code': 500}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_model_name, "object": "model",
                                            "owned_by": "hf-baseline",
                                            "max_model_len": context_length}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await handle(request, chat=False)

    return app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baseline_hf_server",
                                 description="Plain transformers OpenAI-compatible server")
    ap.add_argument("--model", default=None, help="HF model dir (default: radixrt's default)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES))
    ap.add_argument("--served-model-name", default="default")
    ap.add_argument("--num-threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    model_dir = args.model
    if model_dir is None:
        from radixrt.default_model import default_model_dir

        model_dir = str(default_model_dir())
    app = create_app(model_dir, args.dtype, args.served_model_name)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
