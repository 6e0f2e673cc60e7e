"""Compute accounting as the paper plots it: theoretical training FLOPs and model FLOPs utilisation (MFU).

Training FLOPs of a batch = 6 x N x tokens (forward 2N + backward 4N per token, Kaplan et al. 2020; N = all
unique parameters, as the paper counts its 358M) + the attention term, which 6N misses: per layer, QK^T
and AV cost 2 x 2 x d_attn FLOPs per (query, key) pair forward, x3 with the backward. A packed causal
document of n tokens has n(n+1)/2 such pairs, so the term is 12 x layers x d_attn x sum_docs n(n+1)/2,
counted on the real document lengths (what a varlen causal kernel computes), not on a dense 1024^2 square.
At context 1024 on Qwen2.5-0.5B it is ~5% of the total.
"""

from __future__ import annotations

import torch
from torch import nn

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "A6000": 154.8, "A5000": 111.1, "A10G": 70.0, "A10": 125.0, "L40S": 362.0, "L40": 181.0,
    "L4": 121.0, "4090": 165.2, "3090": 71.0, "V100": 125.0, "T4": 65.0,
}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """Peak of one device, or None when unknown (then no MFU is reported rather than a made-up one)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "H100 SXM" before "H100"
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key]
    return None


def attention_width(model: nn.Module) -> tuple[int, int]:
    """(layers, query heads x head dim) from an HF config."""
    c = model.config
    layers = int(getattr(c, "num_hidden_layers", 0))
    hidden = int(getattr(c, "hidden_size", 0))
    heads = int(getattr(c, "num_attention_heads", 0) or 1)
    head_dim = int(getattr(c, "head_dim", 0) or hidden // heads)
    return layers, heads * head_dim


def doc_pairs(position_ids: torch.Tensor) -> int:
    """sum over documents of n(n+1)/2 causal (query, key) pairs: each token at position i sees i+1 keys."""
    return int((position_ids.long() + 1).sum())


def batch_flops(n_params: int, tokens: int, pairs: int, layers: int, width: int) -> float:
    return 6.0 * n_params * tokens + 12.0 * layers * width * pairs
