"""Start-up: what each process imports before it is ready, and the tokenizer class cache that
keeps the tokenizer process off AutoTokenizer's imports (torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from radixrt.tokenizer.tokenize import CLASS_CACHE_FILE, load_tokenizer

TEXT = "Hello, world! Ünïcode, tabs\tand  spaces, <|im_start|> and 1234567."
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.mark.parametrize("arch", ["default", "qwen2"])  # GPT2Tokenizer, Qwen2Tokenizer
def test_cached_tokenizer_class_is_autotokenizers(arch: str, tmp_path: Path,
                                                  default_model_dir: Path,
                                                  make_tiny_model) -> None:  # noqa: ANN001
    path = str(default_model_dir if arch == "default" else make_tiny_model(arch))
    reference = AutoTokenizer.from_pretrained(path)
    first = load_tokenizer(path, cache_dir=tmp_path)  # AutoTokenizer, then the class cached
    entries = json.loads((tmp_path / CLASS_CACHE_FILE).read_text())
    assert list(entries.values()) == [type(reference).__name__]
    second = load_tokenizer(path, cache_dir=tmp_path)  # the cached class, directly
    for tok in (first, second):
        assert type(tok) is type(reference)
        assert tok.get_vocab() == reference.get_vocab()
        assert tok.all_special_ids == reference.all_special_ids
        assert tok.encode(TEXT) == reference.encode(TEXT)
        assert tok.decode(reference.encode(TEXT)) == reference.decode(reference.encode(TEXT))
        assert tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) \
            == reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_a_stale_cache_entry_is_not_trusted(tmp_path: Path, default_model_dir: Path) -> None:
    """An entry naming something that is not a tokenizer class falls back to AutoTokenizer."""
    load_tokenizer(str(default_model_dir), cache_dir=tmp_path)
    file = tmp_path / CLASS_CACHE_FILE
    key = next(iter(json.loads(file.read_text())))
    file.write_text(json.dumps({key: "AutoConfig"}))
    tok = load_tokenizer(str(default_model_dir), cache_dir=tmp_path)
    assert type(tok) is type(AutoTokenizer.from_pretrained(str(default_model_dir)))
    assert json.loads(file.read_text())[key] == type(tok).__name__


def test_start_up_imports_neither_torch_nor_dynamo_early(tmp_path: Path,
                                                        default_model_dir: Path) -> None:
    """The frontend resolves the device without torch on a machine with no GPU driver, the
    tokenizer process loads a cached tokenizer class without torch, and building the model
    on the meta device does not import torch._dynamo (each cost seconds of every start)."""
    load_tokenizer(str(default_model_dir), cache_dir=tmp_path)  # fills the class cache
    code = f"""
import sys
import radixrt.config as config
config._GPU_DRIVER_PATHS = ({str(tmp_path / "no-driver")!r},)
engine = config.build_engine_config({str(default_model_dir)!r}, dtype="float32")
from radixrt.tokenizer.tokenize import load_tokenizer
load_tokenizer(engine.model_path)
print(engine.device, "torch" in sys.modules)
import torch
from radixrt.models.loader import load_model
load_model(engine.model_path, torch.float32, "cpu", quantization=engine.quantization)
print(engine.quantization, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "RADIXRT_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["cpu", "False", "int4", "False"], out.stdout + out.stderr


def test_startup_benchmark_runs(make_tiny_model, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    """bench/bench_startup.py starts a real server, sees it ready and reports its stages."""
    from bench import bench_startup

    model = make_tiny_model("llama")
    assert bench_startup.main(["--rounds", "1", "--server-args",
                               f"--model {model} --dtype float32"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| this tree |"))
    ready, loaded, kv_pool, serving = (float(x) for x in row.split("|")[2:6])
    assert 0 < loaded <= kv_pool <= serving and 0 < ready
