"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral); Qwen2/Qwen3 differ only by flags.

Tokens are flattened over the batch ([T, hidden]); attention goes through the backend, which
owns the KV pool and knows each request's layout for this step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from radixrt.attention.base import AttentionBackend
from radixrt.models import gemv_cuda
from radixrt.models.config import ModelConfig, kv_head_start, shard_config
from radixrt.models.cpu_flat import flat_layers
from radixrt.models.layers import RMSNorm, RotaryEmbedding
from radixrt.models.parallel import TensorParallel, VocabParallelEmbedding


class WeightSlot(NamedTuple):
    """Where a checkpoint tensor goes: rows [offset, offset + rows) of our parameter `ours`
    (rows -1: all of it), and, under tensor parallelism, the slice of the checkpoint tensor
    this rank keeps: along `shard_dim` (None: whole) from `shard_start`, as long as the
    target is."""

    ours: str
    offset: int
    rows: int
    shard_dim: int | None = None
    shard_start: int = 0


class Attention(nn.Module):
    """cfg: this rank's config (its heads); o_proj is row-parallel, hence the all-reduce."""

    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.layer_id = layer_id
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size,
                                  bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
                attn: AttentionBackend) -> torch.Tensor:
        return self.attend(self.qkv_proj(x), positions, rope, attn)

    def attend(self, qkv: torch.Tensor, positions: torch.Tensor, rope: RotaryEmbedding,
               attn: AttentionBackend) -> torch.Tensor:
        """Everything after the qkv projection (its output [T, q + 2 kv])."""
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        out = attn.forward_rope(positions, q, k, v, self.layer_id, rope)
        return self.tp.all_reduce(self.o_proj(out.reshape(t, self.q_size)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up_proj(x))

    def down(self, gate_up: torch.Tensor) -> torch.Tensor:
        """Everything after the gate_up projection (its output [T, 2 * intermediate])."""
        return self.tp.all_reduce(gemv_cuda.down_from_gate_up(self.down_proj, gate_up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int, tp: TensorParallel) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_id, tp)
        self.mlp = MLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                rope: RotaryEmbedding, attn: AttentionBackend
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): the caller adds them, so
        each residual add fuses with the norm that follows it."""
        # norm_linear: the add, the norm and the projection after it, in one kernel where
        # gemv_cuda.install chose that for a one-token step.
        qkv, residual = gemv_cuda.norm_linear(self.input_layernorm, self.self_attn.qkv_proj,
                                              x, residual)
        h = self.self_attn.attend(qkv, positions, rope, attn)
        gate_up, residual = gemv_cuda.norm_linear(self.post_attention_layernorm,
                                                  self.mlp.gate_up_proj, h, residual)
        return self.mlp.down(gate_up), residual


class LlamaForCausalLM(nn.Module):
    """cfg: the whole model's config; tp: this rank (the default: the whole model here)."""

    def __init__(self, cfg: ModelConfig, device: torch.device,
                 tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.tp = tp = tp or TensorParallel()
        local = shard_config(cfg, tp.size)  # raises on a layout that does not split
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.layers = nn.ModuleList(DecoderLayer(local, i, tp) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size // tp.size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(cfg, device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend,
                logits_indices: torch.Tensor, hidden_out: list[torch.Tensor] | None = None,
                hidden_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (the model's dtype) [len(logits_indices), vocab] of the tokens at those flat
        indices (on rank 0; another rank gets its vocabulary slice's). With hidden_indices,
        the final hidden states (after the last norm, float32) of those tokens are appended
        to hidden_out: what embeddings are made of."""
        x = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        flat = flat_layers(self) if x.device.type == "cpu" else None
        ran = flat.run(x, positions, attn) if flat is not None else None
        if ran is not None:
            x, residual = ran
        else:
            for layer in self.layers:
                x, residual = layer(x, residual, positions, self.rope, attn)
        assert residual is not None
        if hidden_indices is not None and hidden_out is not None:  # before norm_linear's add
            hidden_out.append(self.norm(x[hidden_indices] + residual[hidden_indices]).float())
        logits, _ = gemv_cuda.norm_linear(self.norm, self.lm_head, x[logits_indices],
                                          residual[logits_indices])
        return self.tp.gather_vocab(logits)

    def linear_prologues(self) -> dict[nn.Module, tuple[str, nn.Module | None]]:
        """projection -> the op the forward runs right before it (gemv_cuda.PROLOGUES) and
        its norm module: what a one-token GEMV may fuse (gemv_cuda.install)."""
        out: dict[nn.Module, tuple[str, nn.Module | None]] = {
            self.lm_head: ("rms_norm", self.norm)}
        for layer in self.layers:
            out[layer.self_attn.qkv_proj] = ("rms_norm", layer.input_layernorm)
            out[layer.mlp.gate_up_proj] = ("rms_norm", layer.post_attention_layernorm)
            out[layer.mlp.down_proj] = ("silu_mul", None)
        return out

    def weight_map(self) -> dict[str, WeightSlot]:
        """HF tensor name -> where it goes (fused projections, this rank's slice)."""
        cfg, tp = self.config, self.tp
        r = tp.rank
        local = shard_config(cfg, tp.size)
        d = cfg.head_dim
        q, kv, inter = local.num_heads * d, local.num_kv_heads * d, local.intermediate_size
        q0, kv0 = r * q, kv_head_start(cfg, tp.size, r) * d  # this rank's rows in HF tensors
        col, row = (0, 1) if tp.size > 1 else (None, None)  # split the output / input dim
        v0 = r * (cfg.vocab_size // tp.size)
        out: dict[str, WeightSlot] = {
            "model.embed_tokens.weight": WeightSlot("embed_tokens.weight", 0, -1, col, v0),
            "model.norm.weight": WeightSlot("norm.weight", 0, -1),
        }
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = WeightSlot("lm_head.weight", 0, -1, col, v0)
        for i in range(cfg.num_layers):
            hf, ours = f"model.layers.{i}.", f"layers.{i}."
            qkv = f"{ours}self_attn.qkv_proj"
            for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
                out[f"{hf}self_attn.q_proj.{kind}"] = WeightSlot(f"{qkv}.{kind}", 0, q, col, q0)
                out[f"{hf}self_attn.k_proj.{kind}"] = WeightSlot(f"{qkv}.{kind}", q, kv, col, kv0)
                out[f"{hf}self_attn.v_proj.{kind}"] = WeightSlot(f"{qkv}.{kind}", q + kv, kv,
                                                                 col, kv0)
            out[f"{hf}self_attn.o_proj.weight"] = WeightSlot(f"{ours}self_attn.o_proj.weight",
                                                             0, -1, row, q0)
            if cfg.qk_norm:
                for n in ("q_norm", "k_norm"):
                    out[f"{hf}self_attn.{n}.weight"] = WeightSlot(f"{ours}self_attn.{n}.weight",
                                                                  0, -1)
            gate_up = f"{ours}mlp.gate_up_proj.weight"
            out[f"{hf}mlp.gate_proj.weight"] = WeightSlot(gate_up, 0, inter, col, r * inter)
            out[f"{hf}mlp.up_proj.weight"] = WeightSlot(gate_up, inter, inter, col, r * inter)
            out[f"{hf}mlp.down_proj.weight"] = WeightSlot(f"{ours}mlp.down_proj.weight", 0, -1,
                                                          row, r * inter)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                out[f"{hf}{norm}.weight"] = WeightSlot(f"{ours}{norm}.weight", 0, -1)
        return out
