"""Per-request sampling parameters, shared by every process."""

from __future__ import annotations

from dataclasses import dataclass, field


class InvalidRequestError(ValueError):
    """A request parameter is out of range; `param` names it (for OpenAI-style 400 bodies)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    """How one request samples and stops; validated once (validate) and then carried to the
    worker, which keeps it per slot."""

    max_new_tokens: int | None = 128  # None: the rest of the context (set by the tokenizer)
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0, vLLM's spelling): no limit
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # applied by the detokenizer
    include_stop_str_in_output: bool = False  # keep a matched stop string in the text
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # The logprob of every prompt token after the first (and this many alternatives each):
    # None for none. The model computes the whole prompt then, bypassing the prefix cache.
    prompt_logprobs: int | None = None
    logit_bias: dict[int, float] | None = None
    skip_special_tokens: bool = True
    n: int = 1
    # Structured output (radixrt/grammar): at most one; json_schema is the schema's JSON text.
    regex: str | None = None
    json_schema: str | None = None

    def __post_init__(self) -> None:
        if self.top_k == 0:
            self.top_k = -1

    @classmethod
    def from_dict(cls, d: dict | SamplingParams | None,
                  defaults: dict | None = None) -> SamplingParams:
        """From a dict over `defaults` (the model's, ModelInfo.sampling_defaults); a
        SamplingParams is taken as it is."""
        if isinstance(d, SamplingParams):
            return d
        d = {**(defaults or {}), **(d or {})}
        known = cls.__dataclass_fields__
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InvalidRequestError(f"unknown sampling parameter(s): {', '.join(unknown)}", unknown[0])
        params = cls(**d)
        if isinstance(params.stop, str):
            params.stop = [params.stop]
        return params

    @property
    def greedy(self) -> bool:
        return self.temperature <= 1e-5 or self.top_k == 1

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    def validate(self, vocab_size: int) -> None:
        """Raise InvalidRequestError naming the first out-of-range parameter."""

        def need(ok: bool, param: str, msg: str) -> None:
            if not ok:
                raise InvalidRequestError(f"{param} {msg}", param)

        if self.max_new_tokens is not None:
            # 0: the prompt's prefill only (its KV into the prefix cache, its logprobs)
            need(self.max_new_tokens >= 0, "max_tokens", "must be at least 0")
            need(self.min_new_tokens <= self.max_new_tokens, "min_tokens",
                 "must be between 0 and max_tokens")
        need(self.min_new_tokens >= 0, "min_tokens", "must be at least 0")
        need(0.0 <= self.temperature <= 100.0, "temperature", "must be between 0 and 100")
        need(0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        need(self.top_k == -1 or self.top_k >= 1, "top_k", "must be -1 (off) or at least 1")
        need(0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]")
        need(0.0 < self.repetition_penalty <= 10.0, "repetition_penalty", "must be in (0, 10]")
        need(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", "must be in [-2, 2]")
        need(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", "must be in [-2, 2]")
        need(0 <= self.top_logprobs <= 20, "top_logprobs", "must be between 0 and 20")
        need(self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20,
             "prompt_logprobs", "must be between 0 and 20")
        need(1 <= self.n <= 16, "n", "must be between 1 and 16")
        for t in self.stop_token_ids:
            need(0 <= t < vocab_size, "stop_token_ids", f"has {t}, outside the vocabulary")
        for t, b in (self.logit_bias or {}).items():
            need(0 <= int(t) < vocab_size, "logit_bias", f"has token {t}, outside the vocabulary")
            need(-100.0 <= b <= 100.0, "logit_bias", "values must be in [-100, 100]")
        need(len(self.stop) <= 16, "stop", "may hold at most 16 strings")
        need(self.regex is None or self.json_schema is None, "regex",
             "and json_schema cannot both be given")

    @property
    def constrained(self) -> bool:
        return self.regex is not None or self.json_schema is not None
