"""Native extension only; all other metadata lives in pyproject.toml."""

from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


def flags_file(path: str) -> list[str]:
    """The flags in a csrc/*.flags file (whitespace-separated, # comments)."""
    text = (Path(__file__).parent / path).read_text()
    return [f for line in text.splitlines() for f in line.split("#", 1)[0].split()]


ext_modules = [
    Pybind11Extension(
        "radixrt._radix_core",
        ["csrc/radix_core.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
    # Quantized matmuls. -fopenmp links libgomp.so.1, the soname of the libgomp that torch's
    # CPU wheel bundles: imported after torch, both share one OpenMP runtime and thread pool.
    # No -march: per-ISA code comes from target_clones / target attributes in the source.
    Pybind11Extension(
        "radixrt._quant_cpu",
        ["csrc/quant_cpu.cpp"],
        depends=["csrc/quant_cpu_avx2.h", "csrc/quant_cpu_gemm_avx2.h", "csrc/cpu_threads.h"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ),
    # The decoder's elementwise layers fused (RMSNorm + residual, RoPE). -ffp-contract=off
    # keeps each product rounded as torch rounds it.
    Pybind11Extension(
        "radixrt._layers_cpu",
        ["csrc/layers_cpu.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
        extra_link_args=["-fopenmp"],
    ),
    # Dense matmuls with one summation order per output, whatever the batch (--deterministic
    # on float weights). Built like _quant_cpu (OpenMP from torch's libgomp, no -march).
    Pybind11Extension(
        "radixrt._dense_cpu",
        ["csrc/dense_cpu.cpp"],
        depends=["csrc/cpu_threads.h"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    ),
    # Paged CPU attention; its flags live in a file that benchmarks read too.
    Pybind11Extension(
        "radixrt._attention_cpu",
        ["csrc/attention_cpu.cpp"],
        depends=["csrc/attention_cpu_kernels.inc", "csrc/attention_cpu.flags"],
        cxx_std=17,
        extra_compile_args=flags_file("csrc/attention_cpu.flags"),
        extra_link_args=["-fopenmp"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
