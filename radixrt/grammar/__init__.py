"""Structured output: JSON-schema and regex constraints compiled to token automata
(outlines-core) over the model's own vocabulary.

spec.py validates a constraint and turns it into a regex; vocabulary.py builds the
outlines-core Vocabulary from our tokenizer; compiler.py compiles Indexes off the scheduler's
critical path with an LRU cache; state.py is one request's Guide and its packed bitmask;
mask.py applies packed bitmasks to logits on the worker.
"""
