"""Output collection: a step's sampled tokens into the requests, and out as TokenOut records."""

from __future__ import annotations

import numpy as np

from radixrt.ipc.messages import PromptLogprobs, StepResult, TokenOut, TokenOutBatch
from radixrt.scheduler.request import Chunk, Request, RequestExtras


def take_token(r: Request, i: int, result: StepResult) -> int:
    """Append row i's sampled token (and its logprobs, if asked) to r; returns the token."""
    tok = int(result.next_ids[i])
    r.output_ids.append(tok)
    r.new_ids.append(tok)
    sp = r.sampling
    if result.logprobs is not None and sp.logprobs:
        r.new_logprobs.append(float(result.logprobs[i]))
        if result.top_ids is not None and result.top_logprobs is not None and sp.top_logprobs:
            k = sp.top_logprobs
            r.new_top.append(list(zip(result.top_ids[i, :k].tolist(),
                                      result.top_logprobs[i, :k].tolist(), strict=True)))
    return tok


def take_prompt_logprobs(chunks: list[Chunk], lp_num: np.ndarray, result: StepResult) -> None:
    """Hand each request its share of the step's prompt logprobs (lp_num[i] rows for chunk
    i, in order). A retracted request keeps them too: those positions are not recomputed."""
    assert result.prompt_logprobs is not None, "prompt logprobs asked, none came back"
    lps, top_ids, top_lps = result.prompt_logprobs, result.prompt_top_ids, result.prompt_top_logprobs
    off = 0
    for (r, _), c in zip(chunks, lp_num.tolist(), strict=True):
        if c and not r.finished:
            assert r.extras is not None
            r.extras.prompt_lps.extend(lps[off : off + c].tolist())
            k = r.sampling.prompt_logprobs or 0
            if k and top_ids is not None and top_lps is not None:
                r.extras.prompt_top.extend(
                    list(zip(ids, vals, strict=True)) for ids, vals in
                    zip(top_ids[off : off + c, :k].tolist(), top_lps[off : off + c, :k].tolist(),
                        strict=True))
        off += c


def take_embeddings(chunks: list[Chunk], embed_of: np.ndarray, result: StepResult) -> None:
    """Hand each embedding request of the step its vector (row j: chunk embed_of[j])."""
    assert result.embeddings is not None, "embeddings asked, none came back"
    for j, b in enumerate(embed_of.tolist()):
        r = chunks[b].req
        if not r.finished and r.extras is not None:
            r.extras.embedding = result.embeddings[j]


def finish_reason(r: Request, tok: int, eos_ids: tuple[int, ...], context_length: int
                  ) -> tuple[str, int | None] | None:
    """(reason, matched stop token) if r ends with tok, else None."""
    s = r.sampling
    if len(r.output_ids) >= s.min_new_tokens:
        if (not s.ignore_eos and tok in eos_ids) or tok in s.stop_token_ids:
            return "stop", tok
    if len(r.output_ids) >= s.max_new_tokens or r.known_len >= context_length:
        return "length", None
    return None


def collect(reqs: list[Request]) -> TokenOutBatch:
    """A TokenOut for each request with new tokens or a finish since its last one (once per
    request, in order); their buffers are emptied."""
    outs: list[TokenOut] = []
    seen: set[int] = set()
    for r in reqs:
        if id(r) in seen or not (r.new_ids or r.finished):
            continue
        seen.add(id(r))
        sp = r.sampling
        out = TokenOut(
            r.rid, r.new_ids, r.finish_reason, r.matched_stop,
            prompt_tokens=len(r.prompt_ids), cached_tokens=r.cached_tokens,
            completion_tokens=len(r.output_ids),
            logprobs=r.new_logprobs if sp.logprobs else None,
            top_logprobs=r.new_top if sp.top_logprobs else None, error=r.error)
        x = r.extras
        if x is not None:
            if sp.prompt_logprobs is not None:
                out.prompt_logprobs = _prompt_logprobs(r, x)
            out.embedding, x.embedding = x.embedding, None
        outs.append(out)
        r.new_ids, r.new_logprobs, r.new_top = [], [], []
    return TokenOutBatch(outs)


def _prompt_logprobs(r: Request, x: RequestExtras) -> PromptLogprobs | None:
    """r's prompt logprobs, once (with its first output token), when it has them all (an
    abort during the prefill reports none)."""
    if x.prompt_lp_sent or len(x.prompt_lps) != len(r.prompt_ids) - 1:
        return None
    x.prompt_lp_sent = True
    out = PromptLogprobs(r.prompt_ids.tolist(), x.prompt_lps,
                         x.prompt_top if r.sampling.prompt_logprobs else None)
    x.prompt_lps, x.prompt_top = [], []
    return out
