"""The data-parallel router: one OpenAI-compatible endpoint in front of many radixrt replicas,
routing each request to the replica most likely to cache its prefix (see policy.py)."""
