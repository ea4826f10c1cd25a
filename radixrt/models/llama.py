"""Llama-family decoder (Llama 2/3, SmolLM2, Mistral); Qwen2/Qwen3 differ only by flags.

Tokens are flattened over the batch ([T, hidden]); attention goes through the backend, which
owns the KV pool and knows each request's layout for this step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.attention.base import AttentionBackend
from radixrt.models.config import ModelConfig
from radixrt.models.layers import RMSNorm, RotaryEmbedding


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
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
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(positions, q, k)
        out = attn.forward(q, k, v, self.layer_id)
        return self.o_proj(out.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_id)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor,
                rope: RotaryEmbedding, attn: AttentionBackend
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): the caller adds them, so
        each residual add fuses with the norm that follows it."""
        if residual is None:
            residual = x
            h = self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, positions, rope, attn)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, device: torch.device) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryEmbedding(cfg, device)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend,
                logits_indices: torch.Tensor) -> torch.Tensor:
        """Logits (float32) [len(logits_indices), vocab] of the tokens at those flat indices."""
        x = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for layer in self.layers:
            x, residual = layer(x, residual, positions, self.rope, attn)
        assert residual is not None
        x, _ = self.norm.add_forward(x[logits_indices], residual[logits_indices])
        return self.lm_head(x).float()

    def weight_map(self) -> dict[str, tuple[str, int, int]]:
        """HF tensor name -> (our parameter name, row offset, rows) for fused projections."""
        cfg = self.config
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        inter = cfg.intermediate_size
        out: dict[str, tuple[str, int, int]] = {
            "model.embed_tokens.weight": ("embed_tokens.weight", 0, -1),
            "model.norm.weight": ("norm.weight", 0, -1),
        }
        if not cfg.tie_word_embeddings:
            out["lm_head.weight"] = ("lm_head.weight", 0, -1)
        for i in range(cfg.num_layers):
            hf, ours = f"model.layers.{i}.", f"layers.{i}."
            for kind in ("weight", "bias") if cfg.attention_bias else ("weight",):
                out[f"{hf}self_attn.q_proj.{kind}"] = (f"{ours}self_attn.qkv_proj.{kind}", 0, q)
                out[f"{hf}self_attn.k_proj.{kind}"] = (f"{ours}self_attn.qkv_proj.{kind}", q, kv)
                out[f"{hf}self_attn.v_proj.{kind}"] = (f"{ours}self_attn.qkv_proj.{kind}", q + kv, kv)
            out[f"{hf}self_attn.o_proj.weight"] = (f"{ours}self_attn.o_proj.weight", 0, -1)
            if cfg.qk_norm:
                out[f"{hf}self_attn.q_norm.weight"] = (f"{ours}self_attn.q_norm.weight", 0, -1)
                out[f"{hf}self_attn.k_norm.weight"] = (f"{ours}self_attn.k_norm.weight", 0, -1)
            out[f"{hf}mlp.gate_proj.weight"] = (f"{ours}mlp.gate_up_proj.weight", 0, inter)
            out[f"{hf}mlp.up_proj.weight"] = (f"{ours}mlp.gate_up_proj.weight", inter, inter)
            out[f"{hf}mlp.down_proj.weight"] = (f"{ours}mlp.down_proj.weight", 0, -1)
            for norm in ("input_layernorm", "post_attention_layernorm"):
                out[f"{hf}{norm}.weight"] = (f"{ours}{norm}.weight", 0, -1)
        return out
