"""Memory layer: the KV pool tensors (the prefix caches that index them live in radixrt.cache)."""

from radixrt.kvcache.pool import KVPool, KVPoolShape

__all__ = ["KVPool", "KVPoolShape"]
