"""Output collection: a step's sampled tokens into the requests, and out as TokenOut records."""

from __future__ import annotations

from radixrt.ipc.messages import StepResult, TokenOut, TokenOutBatch
from radixrt.scheduler.request import Request


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
        outs.append(TokenOut(
            r.rid, r.new_ids, r.finish_reason, r.matched_stop,
            prompt_tokens=len(r.prompt_ids), cached_tokens=r.cached_tokens,
            completion_tokens=len(r.output_ids),
            logprobs=r.new_logprobs if sp.logprobs else None,
            top_logprobs=r.new_top if sp.top_logprobs else None, error=r.error))
        r.new_ids, r.new_logprobs, r.new_top = [], [], []
    return TokenOutBatch(outs)
