"""radixrt: a prefix-sharing LLM inference server built around a radix-tree KV cache."""

from radixrt.sampling_params import SamplingParams

__all__ = ["Engine", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Lazy, so `import radixrt` stays cheap in every child process.
    if name == "Engine":
        from radixrt.engine import Engine

        return Engine
    raise AttributeError(name)
