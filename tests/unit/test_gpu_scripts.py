"""The CPU-side parts of the GPU scripts: what gpu_bundle.py picks, and bench/gpu_bench.py's
weights and report. Offline: the real PyPI download runs only with RADIXRT_TEST_BUNDLE_DOWNLOAD=1
(it fetches the 3 MB tvm-ffi wheel, not FlashInfer's 62 MB one)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):  # noqa: ANN202 - a module
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


gb = _load("gpu_bundle", REPO / "scripts" / "gpu_bundle.py")
bench = _load("gpu_bench", REPO / "bench" / "gpu_bench.py")


# ----------------------------------------------------------------------------- selection


def test_closure_skips_image_packages_markers_and_extras() -> None:
    reqs = {
        "pyzmq": ['cffi; implementation_name == "pypy"'],
        "fastapi": ["starlette>=1.6", "pydantic>=2.9", "anyio>=4", 'httpx; extra == "all"'],
        "starlette": ["anyio<5", "typing-extensions>=4.10; python_version < '3.13'"],
        "pydantic": ["pydantic-core==2.46.4", "annotated-types>=0.6"],
        "uvicorn": ["click>=7", "typing-extensions>=4.0; python_version < '3.11'"],
        "typing-extensions": [],
    }
    got = gb.requirement_closure(["torch>=2.5", "pyzmq>=25", "FastAPI>=0.110", "uvicorn",
                                  "numpy", 'pywin32; sys_platform == "win32"'],
                                 lambda n: reqs.get(n))
    assert got == ["pyzmq", "fastapi", "uvicorn", "starlette", "pydantic", "typing-extensions",
                   "pydantic-core", "annotated-types"]
    # cffi only under PyPy; httpx only as an extra; anyio, click, torch, numpy on the image.
    assert not {"cffi", "httpx", "anyio", "click", "torch", "numpy", "pywin32"} & set(got)


def test_metadata_requirement_reads_flashinfer_style_metadata() -> None:
    meta = "\n".join([
        "Metadata-Version: 2.4", "Name: flashinfer-python", "Version: 0.7.2.post1",
        "Requires-Dist: apache-tvm-ffi<0.2,>=0.1.12; extra == \"ptx\"",
        "Requires-Dist: apache-tvm-ffi<0.2,>=0.1.11",
        "Requires-Dist: click", "Requires-Dist: torch"])
    req = gb.metadata_requirement(meta, "Apache_TVM_FFI")
    assert req.specifier == SpecifierSet(">=0.1.11,<0.2")
    with pytest.raises(LookupError):
        gb.metadata_requirement(meta, "cuda-python")


def test_select_wheels_picks_cp312_linux_x86_64_at_the_wanted_version() -> None:
    files = [
        "apache_tvm_ffi-0.1.10-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "apache_tvm_ffi-0.1.15.post2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "apache_tvm_ffi-0.1.15.post2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "apache_tvm_ffi-0.1.15.post2-cp312-cp312-manylinux_2_28_aarch64.whl",
        "apache_tvm_ffi-0.1.15.post2-cp312-cp312-musllinux_1_2_x86_64.whl",
        "apache_tvm_ffi-0.2.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "pyzmq-27.3.0-cp312-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
        "pyzmq-27.3.0-cp312-abi3-win_amd64.whl",
        "pyzmq-26.0.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "pydantic_core-2.46.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "pydantic_core-2.46.4-cp312-cp312-macosx_11_0_arm64.whl",
        "fastapi-0.165.0-py3-none-any.whl",
        "fastapi-0.164.0-py3-none-any.whl",
        "README.txt",
    ]
    wanted = {"apache-tvm-ffi": SpecifierSet(">=0.1.11,<0.2"),
              "pyzmq": SpecifierSet("==27.3.0"), "pydantic-core": SpecifierSet("==2.46.4"),
              "fastapi": SpecifierSet("==0.165.0")}
    got = gb.select_wheels(files, wanted)
    assert got == {
        "apache-tvm-ffi":
            "apache_tvm_ffi-0.1.15.post2-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "pyzmq": "pyzmq-27.3.0-cp312-abi3-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl",
        "pydantic-core":
            "pydantic_core-2.46.4-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "fastapi": "fastapi-0.165.0-py3-none-any.whl",
    }
    with pytest.raises(LookupError, match="outlines-core"):
        gb.select_wheels(files, {**wanted, "outlines-core": SpecifierSet("==0.2.14")})
    with pytest.raises(LookupError):  # only a cp311 build of this version
        gb.select_wheels(["foo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"],
                         {"foo": SpecifierSet("==1.0")})


def _wheel(tmp: Path, name: str, version: str, requires: list[str]) -> Path:
    path = tmp / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def test_unmet_requirements_flags_what_neither_image_nor_bundle_has(tmp_path: Path) -> None:
    a = _wheel(tmp_path, "alpha", "1.0", ["beta>=1", "numpy", "gamma; extra == 'x'"])
    b = _wheel(tmp_path, "beta", "2.0", ["delta", "colorama; sys_platform == 'win32'"])
    assert gb.wheel_metadata(a).startswith("Metadata-Version")
    assert gb.unmet_requirements([a, b]) == ["beta-2.0-py3-none-any.whl requires delta"]


def test_serving_dependencies_of_this_repo() -> None:
    plan = gb.bundle_plan()
    serving = set(plan["serving"])
    assert {"pyzmq", "fastapi", "uvicorn", "pydantic", "pydantic-core"} <= serving
    assert not {"torch", "numpy", "transformers", "safetensors", "msgpack"} & serving
    assert plan["flashinfer"][0] == "flashinfer-python==0.7.2.post1"


def test_tree_size_is_measured_from_git(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    size = gb.tree_bytes(REPO)
    assert 0 < size < gb.TRAVEL_LIMIT_MIB * 2**20
    assert size >= (REPO / "scripts" / "gpu_bundle.py").stat().st_size


def test_shell_scripts_parse() -> None:
    for name in ("prepare_gpu_bundle.sh", "gpu_check.sh"):
        subprocess.run(["bash", "-n", str(REPO / "scripts" / name)], check=True)


def test_gpu_check_tp_step_names_existing_tests() -> None:
    """The tensor-parallel step runs a test file that exists, gated on the GPU count."""
    script = (REPO / "scripts" / "gpu_check.sh").read_text()
    line = next(x for x in script.splitlines() if x.startswith("TP_TESTS="))
    assert (REPO / line.split("=", 1)[1]).is_file()
    assert '[ "$NGPU" -ge 2 ]' in script and '--ignore="$TP_TESTS"' in script


@pytest.mark.slow  # downloads from PyPI: run with -m slow
def test_real_download_of_the_tvm_ffi_wheel(tmp_path: Path) -> None:
    gb.pip_download("apache-tvm-ffi>=0.1.11,<0.2", tmp_path)
    got = gb.select_wheels(os.listdir(tmp_path), {"apache-tvm-ffi": SpecifierSet(">=0.1.11,<0.2")})
    assert "cp312" in got["apache-tvm-ffi"] and "x86_64" in got["apache-tvm-ffi"]


# ----------------------------------------------------------------------------- benchmark


def test_random_model_loads_and_counts(tmp_path: Path) -> None:
    from radixrt.models.config import ModelConfig
    from radixrt.models.loader import load_model

    fields = dict(bench.PRESETS["tiny"], num_hidden_layers=2, vocab_size=1000)
    n = bench.write_random_model(tmp_path, fields, torch.device("cpu"), torch.float32)
    assert n == bench.count_params(fields)
    model = load_model(tmp_path, torch.float32, "cpu", ModelConfig.from_dir(tmp_path))
    assert sum(p.numel() for p in model.parameters()) == n
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # one per layer + embeddings/head


def test_llama3_8b_preset_has_8b_params() -> None:
    assert 8.0e9 < bench.count_params(bench.PRESETS["llama3-8b"]) < 8.1e9


def test_card_bandwidth() -> None:
    assert bench.card_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bench.card_bandwidth("NVIDIA H200") == 4.8e12
    assert bench.card_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert bench.card_bandwidth("cpu") is None


def test_tiny_benchmark_runs_on_cpu(tmp_path: Path) -> None:
    """The whole benchmark on a tiny CPU model: every section runs and the report renders."""
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    args = bench.parse_args([
        "--preset", "tiny", "--layers", "1", "--device", "cpu", "--budget-s", "300",
        "--decode-batches", "1,2", "--eager-batches", "", "--prefill-batch", "2",
        "--prefill-len", "16", "--prefill-repeats", "1", "--decode-context", "16",
        "--decode-steps", "2", "--prefix-requests", "2", "--prefix-len", "32",
        "--prefix-suffix", "4", "--prefix-new-tokens", "2", "--skip-transformers",
        "--skip-overlap", "--out-json", str(out_json), "--out-md", str(out_md)])
    r = bench.Bench(args).run()
    assert not r["errors"], r["errors"]
    assert [d["batch"] for d in r["decode"]] == [1, 2]
    assert r["shared_prefix"]["radix_on"]["cached_prompt_tokens"] >= 2 * 32 - 16
    assert r["shared_prefix"]["radix_off"]["cached_prompt_tokens"] == 0
    md = out_md.read_text()
    assert "## Decode" in md and "Shared-prefix" in md


def test_card_slug() -> None:
    assert bench.card_slug("NVIDIA H200") == "h200"
    assert bench.card_slug("NVIDIA H100 80GB HBM3") == "h100_80gb"
    assert bench.card_slug("cpu") == "cpu"


def test_gpu_check_dry_run_writes_the_required_keys(tmp_path: Path,
                                                    default_model_dir: Path) -> None:
    """scripts/gpu_check.sh's plumbing on the CPU: every benchmark section, transformers and
    overlap (two radixrt.Engine runs) included, and <card>_results.json with the keys the GPU
    issue asks for; only the card's own figures are absent on a CPU."""
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "OUT": str(tmp_path / "out"),
           "GPU_CHECK_DOCS_DIR": str(tmp_path / "docs"), "PYTHON": sys.executable,
           "GPU_BENCH_TOKENIZER_DIR": str(default_model_dir)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((tmp_path / "docs" / "cpu_results.json").read_text())
    assert (tmp_path / "out" / "cpu_results.json").is_file()
    assert not r["errors"], r["errors"]
    assert r["missing_keys"] == ["bandwidth.fraction_of_peak", "bandwidth.card_TBps"]
    assert bench.missing_keys(r) == r["missing_keys"]
    assert r["model"]["params"] > 0 and r["prefill"]["tokens_per_s"] > 0
    assert r["prefill_transformers"]["tokens_per_s"] > 0
    assert [d["batch"] for d in r["decode"]] == [1, 2]
    o = r["overlap"]
    assert o["identical_outputs"] and o["exposed_host_ms_per_step"] >= 0
    assert o["on"]["steps"] > 0 and o["off"]["steps"] > 0  # arrivals may split prefills
    assert set(r["fused_ops"]) >= {"rms_norm", "add_rms_norm", "silu_and_mul", "rope"}
    assert not r["fused_ops"]["available"]  # CPU: the torch path on both sides
    md = (tmp_path / "out" / "gpu_summary.md").read_text()
    assert "## Overlap scheduling" in md and "## Fused ops" in md


def test_gemm_probe_plumbing_on_cpu() -> None:
    """bench/gpu_gemm.py on a CPU (no library switch there): one row per projection, batch
    and variant with real timings, rendered in the benchmark's report."""
    from bench import gpu_gemm

    fields = bench.PRESETS["tiny"]
    rows = gpu_gemm.gemm_rows(fields, torch.device("cpu"), torch.float32, batches=(1, 3),
                              reps=1)
    shapes = gpu_gemm.projection_shapes(fields)
    assert shapes["qkv"] == (256 + 2 * 2 * 32, 256) and shapes["lm_head"] == (49152, 256)
    assert len(rows) == len(shapes) * 2 * 3
    assert all(r["us"] > 0 and r["weight_TBps"] > 0 for r in rows)
    table = gpu_gemm.markdown(rows)
    assert table[0].startswith("| gemm | batch | linear/cublas us (TB/s) |")
    assert len(table) == 2 + len(shapes) * 2 and table[4].startswith("| o | 1 | ")
    md = bench.markdown({"device": "cpu", "preset": "tiny", "torch": "x", "gemm": rows,
                         "check": {}, "setup": {}, "skipped": [], "errors": {},
                         "model": {"params": 1e6, "num_hidden_layers": 1, "dtype": "float32"}})
    assert "## The step's GEMMs alone" in md and "\n".join(table) in md


def test_decode_kernels_table_lists_each_kernel_and_its_error() -> None:
    """The decode_kernels section's rows (a CUDA-only section) render one line per kernel, a
    kernel that failed with its error in place of the timings; decode_rope_kv's A/B too."""
    rows = [{"kernel": "fa2", "bs1_step_ms": 5.1, "bs1_fraction_of_peak": 0.62,
             "bs128_step_ms": 10.6, "bs128_fraction_of_peak": 0.64},
            {"kernel": "fa3", "error": "RuntimeError: no sm90 build"},
            {"kernel": "cuda-cores", "bs1_step_ms": 4.9, "bs1_fraction_of_peak": 0.65,
             "bs128_step_ms": 12.0, "bs128_fraction_of_peak": 0.57}]
    md = bench.markdown({"device": "cpu", "preset": "tiny", "torch": "x", "check": {},
                         "setup": {}, "skipped": [], "errors": {},
                         "decode_kernels": {"default": "auto", "context": 1043, "rows": rows},
                         "decode_rope_kv": {"status": "fused", "rows": [
                             {"batch": 1, "fused_step_ms": 4.8, "unfused_step_ms": 4.9,
                              "speedup": 1.021}]},
                         "model": {"params": 1e6, "num_hidden_layers": 1, "dtype": "float32"}})
    lines = md.splitlines()
    head = lines.index(next(x for x in lines if x.startswith("## Decode step by FlashInfer")))
    assert "default: auto" in lines[head]
    assert lines[head + 2] == ("| kernel | bs 1 ms/step | bs 1 of peak | bs 128 ms/step | "
                               "bs 128 of peak |")
    assert lines[head + 4] == "| fa2 | 5.1 | 0.62 | 10.6 | 0.64 |"
    assert lines[head + 5] == "| fa3 | RuntimeError: no sm90 build |"
    assert lines[head + 6] == "| cuda-cores | 4.9 | 0.65 | 12.0 | 0.57 |"
    assert "## Decode with RoPE + KV write fused and not (fused; graphs recaptured)" in md
    assert "| 1 | 4.8 | 4.9 | 1.021 |" in lines
