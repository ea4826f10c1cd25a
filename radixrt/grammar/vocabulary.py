"""outlines-core Vocabulary built from our own tokenizer (never from a model hub).

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen) store each byte as a printable
character: those pieces are mapped back to raw bytes, since the grammar's automaton runs on
bytes. SentencePiece pieces use U+2581 for a space and <0xNN> for raw bytes. Special tokens
(and the EOS, which outlines-core handles itself) are left out: the grammar never emits them.

A model directory with a tokenizer.json is read with the `tokenizers` library alone: importing
transformers and building an AutoTokenizer took 6.9 of the 7.4 s a first constrained request
waited for its vocabulary here.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from outlines_core import Vocabulary

logger = logging.getLogger("radixrt")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def is_byte_level(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"


def token_bytes(piece: str, byte_level: bool) -> bytes | None:
    """The raw bytes a vocabulary piece stands for (None: cannot be mapped)."""
    if byte_level:
        table = unicode_to_byte()
        if not all(c in table for c in piece):
            return None
        return bytes(table[c] for c in piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    return piece.replace("\u2581", " ").encode("utf-8")


def build_vocabulary(tokenizer: Any, eos_id: int) -> Vocabulary:
    """The Vocabulary of a Hugging Face tokenizer, with eos_id as the end token."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return vocabulary_from_pieces(tokenizer.get_vocab(), special, is_byte_level(tokenizer),
                                  eos_id)


def load_vocabulary(model_dir: str | Path, eos_id: int) -> Vocabulary:
    """The Vocabulary of the tokenizer in model_dir: from tokenizer.json alone where there is
    one, else through transformers (SentencePiece-only directories)."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        from transformers import AutoTokenizer

        return build_vocabulary(AutoTokenizer.from_pretrained(model_dir), eos_id)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    # Every added token is left out, special or not, as transformers' added_tokens_decoder does.
    special = set(tok.get_added_tokens_decoder())
    byte_level = type(tok.decoder).__name__ == "ByteLevel"
    return vocabulary_from_pieces(tok.get_vocab(with_added_tokens=True), special, byte_level,
                                  eos_id)


def vocabulary_from_pieces(pieces: dict[str, int], special: set[int], byte_level: bool,
                           eos_id: int) -> Vocabulary:
    """The Vocabulary of token ids grouped by the raw bytes they stand for (eos_id and the
    special ids left out)."""
    by_bytes: dict[bytes, list[int]] = {}
    for piece, tid in pieces.items():
        if tid == eos_id or tid in special:
            continue
        raw = token_bytes(piece, byte_level)
        if raw:
            by_bytes.setdefault(raw, []).append(tid)
    logger.debug("grammar vocabulary: %d byte strings", len(by_bytes))
    return Vocabulary(eos_id, by_bytes)
