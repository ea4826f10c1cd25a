"""The quantization benchmarks still run against the current quant and ModelRunner APIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import ab_quant_kernels, bench_decode, bench_quant_linear
from radixrt.models import quant

pytestmark = pytest.mark.skipif(not quant.native_available(),
                                reason="radixrt._quant_cpu is not built")


def test_bench_quant_linear_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.json"
    assert bench_quant_linear.main(["--shapes", "o,lm_head", "--rows", "1,65", "--rounds", "2",
                                    "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["rows"]) for r in rows] == [("o", 1), ("o", 65), ("lm_head", 1)]
    assert all(r["int4-auto_us"] > 0 and r["fp32_gbs"] > 0 for r in rows)
    assert capsys.readouterr().out.count("| o 576x576 |") == 2


def test_bench_decode_in_process_runs(make_tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    from radixrt.models import fused

    out = tmp_path / "d.json"
    before = fused.enabled
    assert bench_decode.main(["--in-process", "--model", str(make_tiny_model("qwen2")),
                              "--contexts", "40", "--batch-sizes", "3", "--steps", "3",
                              "--backends", "torch", "--quantizations", "none,int4",
                              "--fused", "on,off", "--json", str(out)]) == 0
    assert fused.enabled is before  # the off cases leave the process-wide switch as found
    rows = json.loads(out.read_text())
    assert [(r["quantization"], r["fused"]) for r in rows] == [
        ("none", "on"), ("none", "off"), ("int4", "on"), ("int4", "off")]
    assert rows[2]["weights_mib"] < rows[0]["weights_mib"]
    assert all(r["step_ms"] > 0 and 0 < r["linear_ms"] < r["step_ms"] for r in rows)


def test_ab_quant_kernels_against_its_own_build(capsys: pytest.CaptureFixture[str]) -> None:
    """This tree against itself (its .so loaded a second time under another name): both
    builds run and agree bit for bit."""
    import radixrt

    tree = Path(radixrt.__file__).resolve().parent.parent
    assert ab_quant_kernels.main([str(tree), "--shapes", "o", "--rows", "1,5",
                                  "--rounds", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| o ")]
    assert len(rows) == 2 and all(line.endswith("| True |") for line in rows), rows


def test_bf16_copy_and_prefill_bench_keep_or_widen_the_matrices(
        make_tiny_model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    """bench.model_16bit rounds a checkpoint to bf16; bench_prefill's +wide case widens its
    matrices (twice the bytes), the plain case keeps them bf16."""
    from bench import bench_prefill, model_16bit
    from radixrt.models import dense_cpu
    from radixrt.models.loader import safetensors_files

    out = model_16bit.copy_16bit(make_tiny_model("llama"), tmp_path / "bf16")
    assert dense_cpu.checkpoint_matrix_dtypes(safetensors_files(out)) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert bench_prefill.main(["--model", str(out), "--tokens", "40", "--rounds", "2",
                               "--case", "cpu:float32:auto:none+wide",
                               "--case", "cpu:float32:auto:none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    mib = [float(line.split(", ")[-1].split()[0]) for line in lines if line.startswith("loaded")]
    assert len(mib) == 2 and 1.9 < mib[0] / mib[1] < 2.01  # norms stay float32 in both
    table = [line for line in lines if line.startswith("| cpu")]
    assert len(table) == 2 and table[0].endswith("| 1.000x |")
