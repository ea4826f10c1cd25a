"""The decoder layers' CPU forward pass as one flat loop of native calls.

Through nn.Module, every layer of a CPU step pays ~0.3 ms of Python: module dispatch, each
kernel wrapper's input checks, a fresh output tensor per op. At the default model's 30
layers that is ~10 ms of a 40-55 ms decode step. When every op of a layer has a native
kernel (int4 / int8 QuantizedLinear or DenseLinear with float32 or 16-bit weights, the fused
RMSNorm and RoPE, the cpu attention backend) and nothing needs the general path (float32
activations, one rank, no biases, no q/k norm, the default linear route, for dense weights a
call the dense kernel takes), FlatCpuLayers runs those kernels in the same order on buffers
allocated once a step. The arithmetic is the module path's, bit for bit
(tests/unit/test_cpu_flat.py compares logits with torch.equal); the module path stays the
reference and the route for everything else.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.attention.base import AttentionBackend
from radixrt.attention.cpu_backend import CpuAttentionBackend
from radixrt.models import dense_cpu, fused, quant

if TYPE_CHECKING:
    from radixrt.models.llama import LlamaForCausalLM

# RADIXRT_FLAT_CPU=0 keeps CPU steps on the module path (A/B benchmarks, debugging).
enabled = os.environ.get("RADIXRT_FLAT_CPU", "1") != "0"


class _Linear(NamedTuple):
    kernel: object  # radixrt._quant_cpu.gemm_q4 / gemm_q8, or one of dense_cpu.FLAT_KERNELS
    args: tuple  # the weight's pointers and N (QuantizedLinear / DenseLinear._decode_call)
    k: int
    n: int


class _Layer(NamedTuple):
    qkv: _Linear
    o: _Linear
    gate_up: _Linear
    down: _Linear
    in_norm: int  # weight pointers
    post_norm: int


class FlatCpuLayers:
    """Built once per model (the weights' pointers); run() per step, or None where it does
    not apply and the caller takes the module path."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        cfg = model.config
        self.layers: list[_Layer] = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            lins = [attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj]
            self.layers.append(_Layer(
                *(_Linear(*m._decode_call()[1:], m.in_features, m.out_features) for m in lins),
                layer.input_layernorm.weight.data_ptr(),
                layer.post_attention_layernorm.weight.data_ptr()))
        first = model.layers[0]
        self.eps = first.input_layernorm.eps
        self.hidden = cfg.hidden_size
        self.heads, self.kv_heads = first.self_attn.num_heads, first.self_attn.num_kv_heads
        self.head_dim = first.self_attn.head_dim
        self.inter = first.mlp.down_proj.in_features
        # quant.set_batch_invariant / DenseLinear.batch_invariant: every call through the
        # one-order kernel (build() sees that all layers agree).
        qkv = first.self_attn.qkv_proj
        self.invariant = qkv.batch_invariant
        # Dense weights: calls of up to this many rows take the kernel (build() checked that
        # all layers agree); larger ones are torch's, on the module path.
        self.dense_rows = qkv.kernel_rows if isinstance(qkv, dense_cpu.DenseLinear) else None
        self.blocked = self.dense_rows is None and all(
            quant._blocked_ok(lin.n) for lay in self.layers
            for lin in (lay.qkv, lay.o, lay.gate_up, lay.down))
        self.rope = model.rope
        self.ext = fused.native()
        self.steps = 0  # forward passes run flat (benchmarks and tests read it)

    @staticmethod
    def build(model: LlamaForCausalLM) -> FlatCpuLayers | None:
        """A flat runner for this model, or None where the module path must run."""
        if model.tp.size != 1 or fused.native() is None:
            return None
        eps = model.layers[0].input_layernorm.eps
        hidden = model.config.hidden_size
        first = model.layers[0].self_attn.qkv_proj
        kind = type(first)
        if kind not in (quant.QuantizedLinear, dense_cpu.DenseLinear):
            return None
        invariant = first.batch_invariant
        for layer in model.layers:
            a, m = layer.self_attn, layer.mlp
            lins = (a.qkv_proj, a.o_proj, m.gate_up_proj, m.down_proj)
            if a.qk_norm or any(type(x) is not kind or x.bias is not None for x in lins):
                return None
            if any(x.batch_invariant != invariant for x in lins):
                return None  # one kernel path for the whole loop
            if kind is dense_cpu.DenseLinear and any(  # float32 math on fp32 or 16-bit weights
                    x.weight.dtype not in dense_cpu.FLAT_KERNELS
                    or x.weight.dtype != first.weight.dtype
                    or x.kernel_rows != first.kernel_rows for x in lins):
                return None
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if any(n.weight.dtype != torch.float32 or n.weight.device.type != "cpu"
                   or n.eps != eps for n in norms):
                return None
            # The loop's buffer widths assume the fused layouts: [q | k | v], [gate | up].
            q, kv = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
            if ((a.qkv_proj.in_features, a.qkv_proj.out_features) != (hidden, q + 2 * kv)
                    or (a.o_proj.in_features, a.o_proj.out_features) != (q, hidden)
                    or m.gate_up_proj.in_features != hidden
                    or m.gate_up_proj.out_features != 2 * m.down_proj.in_features
                    or m.down_proj.out_features != hidden):
                return None
        if model.rope.cos.device.type != "cpu" or model.rope.cos.dtype != torch.float32:
            return None
        return FlatCpuLayers(model)

    def run(self, x: torch.Tensor, positions: torch.Tensor, attn: AttentionBackend
            ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(last layer's output, residual stream) as the module loop returns them, from the
        embedded tokens x [T, hidden]; None where this call needs the module path."""
        t = x.shape[0]
        if (type(attn) is not CpuAttentionBackend or attn.dtype != torch.float32
                or x.dtype != torch.float32 or x.dim() != 2 or not x.is_contiguous()
                or quant._linear_path != "auto"
                or attn.plan_obj is None or attn.num_tokens != t or t == 0):
            return None
        if self.dense_rows is not None:
            if t > self.dense_rows and not self.invariant:
                return None  # torch's matmul: the module path
            code = 0  # the dense kernel has one path
        elif t > quant.SMALL_M and not self.blocked and not self.invariant:
            return None
        elif self.invariant:
            code = quant.KERNEL_PATHS["invariant"]
        else:
            code = 0 if t <= quant.SMALL_M else quant.KERNEL_PATHS["blocked"]
        threads = torch.get_num_threads()
        hid, q_size = self.hidden, self.heads * self.head_dim
        kv_size = self.kv_heads * self.head_dim
        qkv_n = q_size + 2 * kv_size
        h, qkv, att, o, gu, act, out = (
            torch.empty(t, w, dtype=torch.float32)
            for w in (hid, qkv_n, q_size, hid, 2 * self.inter, self.inter, hid))
        pos = positions.to(torch.int64).contiguous()
        hp, qkvp, attp, op, gup, actp, outp = (b.data_ptr() for b in (h, qkv, att, o, gu, act,
                                                                      out))
        gate, up = gu[:, : self.inter], gu[:, self.inter :]
        kp, vp = qkvp + 4 * q_size, qkvp + 4 * (q_size + kv_size)
        posp, cosp, sinp = pos.data_ptr(), self.rope.cos.data_ptr(), self.rope.sin.data_ptr()
        rmsnorm, rope, eps, hd = self.ext.rmsnorm, self.ext.rope, self.eps, self.head_dim
        run_attn = attn.plan_obj.run
        k_ptrs, v_ptrs = attn.k_ptrs, attn.v_ptrs
        self.steps += 1
        residual = x
        resp = x.data_ptr()
        for i, lay in enumerate(self.layers):
            if i == 0:  # the residual stream starts as the embeddings, normalised alone
                rmsnorm(resp, hid, 0, 0, lay.in_norm, hp, hid, t, hid, eps, False)
            else:  # residual += previous layer's output, then its norm
                rmsnorm(outp, hid, resp, hid, lay.in_norm, hp, hid, t, hid, eps, False)
            lin = lay.qkv
            lin.kernel(hp, t, lin.k, *lin.args, qkvp, threads, code)
            rope(qkvp, qkv_n, self.heads, hd, posp, cosp, sinp, t, False)
            rope(kp, qkv_n, self.kv_heads, hd, posp, cosp, sinp, t, False)
            run_attn(qkvp, qkv_n, kp, qkv_n, vp, qkv_n, attp, t, k_ptrs[i], v_ptrs[i])
            lin = lay.o
            lin.kernel(attp, t, lin.k, *lin.args, op, threads, code)
            rmsnorm(op, hid, resp, hid, lay.post_norm, hp, hid, t, hid, eps, False)
            lin = lay.gate_up
            lin.kernel(hp, t, lin.k, *lin.args, gup, threads, code)
            torch.mul(F.silu(gate), up, out=act)
            lin = lay.down
            lin.kernel(actp, t, lin.k, *lin.args, outp, threads, code)
        return out, residual


def flat_layers(model: nn.Module) -> FlatCpuLayers | None:
    """The model's flat runner, or None; built once and again only if its weights moved."""
    if not enabled or not fused.enabled:
        return None
    first = model.layers[0].self_attn.qkv_proj
    if isinstance(first, quant.QuantizedLinear):
        key: tuple | None = (first.qs.data_ptr(), first.batch_invariant)
    elif isinstance(first, dense_cpu.DenseLinear):
        key = (first.weight.data_ptr(), first.batch_invariant, first.kernel_rows)
    else:
        key = None
    cached = model.__dict__.get("_flat_cpu")
    if cached is None or cached[0] != key:
        cached = (key, FlatCpuLayers.build(model))  # type: ignore[arg-type]
        model.__dict__["_flat_cpu"] = cached
    return cached[1]


def flat_steps(model: nn.Module) -> int:
    """How many forward passes of this model have run flat so far."""
    cached = model.__dict__.get("_flat_cpu")
    return cached[1].steps if cached and cached[1] else 0
