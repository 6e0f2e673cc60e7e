"""Varlen attention for packed rows: every document attends only to itself, with no dense [S, S] mask.

A packed batch is [B, S] rows holding several documents each, with `position_ids` restarting at 0 at every
document. transformers' own paths (5.x) get this wrong in ways that fail silently:
with a cache (use_cache defaults to True) or an all-ones attention_mask the documents attend to each other;
flash-attention only detects packing when B == 1; OPT never passes position_ids to its mask builder at all;
and SDPA builds a dense [B, 1, S, S] mask (plus a 7x repeat_kv copy for Qwen2.5-0.5B's 14/2 heads).

So slam hands the boundaries to the kernel explicitly: the data loader computes cumulative sequence lengths
over the flattened [B*S] batch (`cu_seqlens_from_position_ids`, a boundary at every document start AND at
every row start) on the host, once per batch, and the model forward receives them as the standard
transformers kwargs `cu_seq_lens_q/k`, `max_length_q/k`, which reach the attention function registered here
as "slam_varlen". On CUDA with fp16/bf16 it calls PyTorch's own FlashAttention-2 varlen kernel
(`torch.nn.attention.varlen.varlen_attn`, causal via window (-1, 0), GQA via enable_gqa; no extra package),
or flash-attn's `flash_attn_varlen_func` when that is installed and torch's is not. Anywhere else (CPU,
fp32) it runs a per-document SDPA reference with the same shapes, which is also what the CPU tests check the
wrapper's reshaping against.

    from slam.attention import use_varlen_attention
    use_varlen_attention(model)            # model.config._attn_implementation = "slam_varlen"
    loss = model(input_ids=..., position_ids=..., use_cache=False, **varlen_kwargs(position_ids))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from slam.errors import SlamError

ATTN_NAME = "slam_varlen"

try:  # PyTorch >= 2.10 ships FlashAttention-2 varlen kernels (GQA from 2.12)
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:  # pragma: no cover - older torch
    _torch_varlen_attn = None

try:  # optional; the PyPI package is source-only, so most installs will not have it
    from flash_attn import flash_attn_varlen_func as _flash_varlen_func  # type: ignore
except ImportError:
    _flash_varlen_func = None


# --- boundaries ----------------------------------------------------------------------------------------------
def cu_seqlens_from_position_ids(position_ids: Any) -> tuple[np.ndarray, int]:
    """[B, S] per-document positions -> (cumulative lengths int32 [N+1] over the flattened B*S tokens, max length).

    A document starts wherever the position does not continue the previous one (pos != prev + 1, as
    transformers' own packing detection reads it; our loader always restarts at 0) and at every row start,
    since a document never continues from one row into the next inside one forward pass.
    Works on numpy arrays or tensors; the result is numpy so the loader computes it on the host, once.
    """
    pos = position_ids.detach().cpu().numpy() if isinstance(position_ids, torch.Tensor) else np.asarray(position_ids)
    if pos.ndim == 1:
        pos = pos[None, :]
    b, s = pos.shape
    start = np.ones_like(pos, dtype=bool)
    start[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    starts = np.flatnonzero(start.reshape(-1))
    cu = np.append(starts, b * s).astype(np.int32)
    max_len = int(np.diff(cu).max()) if len(cu) > 1 else 0
    return cu, max_len


def varlen_kwargs(position_ids: Any, device: torch.device | str | None = None) -> dict[str, Any]:
    """The forward kwargs that carry the document boundaries to the "slam_varlen" attention function."""
    cu, max_len = cu_seqlens_from_position_ids(position_ids)
    cu_t = torch.from_numpy(cu)
    if device is not None:
        cu_t = cu_t.to(device, non_blocking=True)
    return {"cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": max_len, "max_length_k": max_len}


# --- kernels -------------------------------------------------------------------------------------------------
def reference_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                     scale: float | None) -> torch.Tensor:
    """Causal attention document by document: q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D] (any device, dtype)."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise SlamError(f"query heads {hq} are not a multiple of key/value heads {hkv}")
    out = torch.empty_like(q)
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b <= a:
            continue
        qd = q[a:b].transpose(0, 1)  # [Hq, L, D]
        kd = k[a:b].transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        vd = v[a:b].transpose(0, 1).repeat_interleave(hq // hkv, dim=0)
        out[a:b] = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale).transpose(0, 1)
    return out


def kernel_name(device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation `varlen_attention_forward` uses for tensors on this device and dtype."""
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if _torch_varlen_attn is not None:
            return "torch.varlen_attn"
        if _flash_varlen_func is not None:
            return "flash_attn"
    return "reference"


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                             max_length_q: int | None = None, max_length_k: int | None = None,
                             position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention-interface signature: query [B, Hq, S, D], key/value [B, Hkv, S, D] ->
    ([B, S, Hq, D], None). Boundaries come from `cu_seq_lens_q` (preferred: precomputed on the host, no sync,
    compile-friendly), else from `position_ids` (one host sync per layer), else one document per row."""
    if dropout:
        raise SlamError("slam_varlen attention has no dropout; set attention dropout to 0 (slam does at init)")
    if sliding_window is not None:
        raise SlamError("slam_varlen attention does not support sliding-window layers")
    if attention_mask is not None and attention_mask.dim() == 4:
        raise SlamError("slam_varlen attention takes document boundaries, not a 4-D mask")
    b, hq, s, d = query.shape
    if key.shape[2] != s:
        raise SlamError("slam_varlen attention is for training/scoring full rows (no KV cache); use_cache=False")
    if cu_seq_lens_q is None:
        if position_ids is not None:
            cu_np, max_length_q = cu_seqlens_from_position_ids(position_ids.expand(b, -1))
        else:
            cu_np, max_length_q = np.arange(0, b * s + 1, s, dtype=np.int32), s
        cu_seq_lens_q = torch.from_numpy(cu_np)
    cu = cu_seq_lens_q.to(device=query.device, dtype=torch.int32)
    max_len = int(max_length_q if max_length_q is not None else s)

    q = query.transpose(1, 2).reshape(b * s, hq, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    if q.device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        # Under bf16 autocast the embedding output is fp32, so RoPE's fp32 cos/sin turn q and k back into fp32
        # and the fp32 path (the per-document reference) would run instead of the FlashAttention-2 kernel.
        # Autocast would cast them for a matmul anyway: do it here, once, so the kernel sees bf16.
        dt = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    which = kernel_name(q.device, q.dtype)
    if which == "torch.varlen_attn":
        out = _torch_varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scaling, window_size=(-1, 0),
                                 enable_gqa=k.shape[1] != hq)
    elif which == "flash_attn":
        out = _flash_varlen_func(q, k, v, cu, cu, max_len, max_len, dropout_p=0.0, softmax_scale=scaling,
                                 causal=True)
    else:
        out = reference_varlen(q, k, v, cu, scaling)
    return out.view(b, s, hq, d), None


def register() -> None:
    """Make "slam_varlen" a valid `attn_implementation` for every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention_forward)


def use_varlen_attention(model: torch.nn.Module) -> None:
    """Switch a loaded HF model to the varlen path (it then needs `varlen_kwargs` in every forward)."""
    register()
    model.set_attn_implementation(ATTN_NAME)


@torch.no_grad()
def packing_leaks(model: torch.nn.Module) -> bool:
    """Probe: does the model's CURRENT attention path let a packed document see its neighbour?

    Runs one row holding two short documents (position_ids restarting, no mask, no cache) and compares the
    second document's logits with the document run alone. transformers' SDPA path passes for Qwen2, Llama
    and GPT-NeoX but fails for OPT, whose mask builder never receives position_ids (checked on 5.23).
    Only a float32 model can be judged exactly; anything else counts as leaking (use varlen, always safe).
    """
    if next(model.parameters()).dtype != torch.float32:
        return True
    dev = next(model.parameters()).device
    top = max(3, min(int(model.config.vocab_size) - 1, 50))
    a = torch.tensor([1, 2, 3, 2, 1]) % top
    b = torch.tensor([1, 3, 2, top - 1, 2, 1]) % top
    ids = torch.cat([a, b])[None].to(dev)
    pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None].to(dev)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, len(a):]
        alone = model(input_ids=b[None].to(dev), use_cache=False).logits[0]
    finally:
        model.train(was_training)
    return not torch.allclose(packed, alone, rtol=1e-4, atol=1e-5)


def prepare_packed_attention(model: torch.nn.Module) -> str:
    """Choose the attention path for packed rows and return its name.

    CUDA: always "slam_varlen" (FlashAttention-2 varlen kernel; no dense mask, no repeat_kv copy).
    CPU: keep the model's SDPA path when the probe shows it separates documents (one fused SDPA call per
    layer; about as fast as the per-document reference at context 512 on 2 cores), else switch to
    "slam_varlen", whose CPU reference is exact for every family.
    """
    if next(model.parameters()).device.type == "cuda" or packing_leaks(model):
        use_varlen_attention(model)
    model._slam_packing_checked = True  # causal_lm_loss need not probe again
    return model.config._attn_implementation


register()
