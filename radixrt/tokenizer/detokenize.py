"""Output side of the tokenizer process: incremental detokenization and stop strings."""

from __future__ import annotations

from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from radixrt.grammar.vocabulary import unicode_to_byte

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Token ids in, new text out, never a broken UTF-8 character.

    Decoding the whole output each step is O(n) per token; instead only a window is decoded:
    ids[prefix_offset:read_offset] were already turned into text, and the text of
    ids[prefix_offset:] minus that prefix is what is new. The leading context tokens keep
    tokenizers that treat a sequence start specially (SentencePiece's leading space) right.
    While the new text ends in U+FFFD the last token holds a partial character: wait.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []  # only the window; older ids are dropped
        self.prefix_offset = 0
        self.read_offset = 0
        self.prefix_text = ""  # decode(ids[prefix_offset:read_offset])

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def add(self, new_ids: list[int]) -> str:
        """Append ids; return the text they complete (possibly empty)."""
        self.ids.extend(new_ids)
        return self._emit(final=False)

    def flush(self) -> str:
        """At the end of a request: whatever is held back, replacement chars included."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        if self.read_offset == len(self.ids):
            return ""
        text = self._decode(self.ids[self.prefix_offset :])
        if not final and text.endswith(REPLACEMENT):
            return ""
        # A window that ends in a whole character decodes to the old text plus the new text.
        new = text[len(self.prefix_text) :]
        # Slide the window: the ids just emitted become the next step's context.
        del self.ids[: self.read_offset]
        self.prefix_offset, self.read_offset = 0, len(self.ids)
        self.prefix_text = self._decode(self.ids)
        return new


class StopStringMatcher:
    """Cuts the output at the first stop string, and holds back a tail that may start one.

    Text is fed in arbitrary chunks (stop strings may span tokens). Text that was emitted
    never ends in a prefix of a stop string, so a match always starts in the pending tail.
    """

    def __init__(self, stops: list[str], keep_stop: bool = False):
        self.stops = [s for s in stops if s]
        self.keep_stop = keep_stop  # include_stop_str_in_output: the text ends with the stop
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, str | None]:
        """Return (text safe to emit, the matched stop string or None)."""
        if not self.stops:
            return text, None
        self.pending += text
        best: tuple[int, str] | None = None
        for s in self.stops:
            i = self.pending.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            end = best[0] + len(best[1]) if self.keep_stop else best[0]
            out, self.pending = self.pending[:end], ""
            return out, best[1]
        hold = 0 if final else self._partial_match_len()
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, None

    def _partial_match_len(self) -> int:
        """Length of the longest tail of pending that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:k]):
                    best = k
                    break
        return best


class TokenTexts:
    """Per-token text and raw bytes, for OpenAI logprobs entries (token / bytes fields)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        # Byte-level BPE (GPT-2, Llama 3, SmolLM2) stores each byte as a printable char.
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self.text_of = lru_cache(maxsize=1 << 16)(self._text)
        self.bytes_of = lru_cache(maxsize=1 << 16)(self._bytes)

    def _text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _bytes(self, token_id: int) -> list[int]:
        if self._byte_level:
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            table = unicode_to_byte()
            if isinstance(piece, str) and all(c in table for c in piece):
                return [table[c] for c in piece]
        return list(self._text(token_id).encode("utf-8"))
