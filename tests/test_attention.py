"""Varlen attention: boundaries, the registered function's reshaping (CPU reference), and the GPU kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slam.attention import (ATTN_NAME, cu_seqlens_from_position_ids, kernel_name, reference_varlen,
                            varlen_attention_forward, varlen_kwargs)
from slam.errors import SlamError


def test_cu_seqlens_are_document_and_row_boundaries():
    pos = np.array([[0, 1, 2, 0, 1, 0],
                    [3, 4, 0, 1, 2, 3],   # a row may start inside a document: still a boundary
                    [0, 1, 2, 3, 4, 5]])
    cu, max_len = cu_seqlens_from_position_ids(pos)
    assert cu.dtype == np.int32
    assert cu.tolist() == [0, 3, 5, 6, 8, 12, 18]
    assert max_len == 6
    # tensors work too, and a 1-D row is one row
    cu_t, _ = cu_seqlens_from_position_ids(torch.tensor([0, 1, 0, 0, 1, 2]))
    assert cu_t.tolist() == [0, 2, 3, 6]
    kw = varlen_kwargs(torch.from_numpy(pos))
    assert kw["cu_seq_lens_q"] is kw["cu_seq_lens_k"] and kw["max_length_q"] == 6


class _Module(torch.nn.Module):
    num_key_value_groups = 2
    is_causal = True


def _dense_block_causal(q, k, v, doc_ids, scale):
    """Independent reference: one dense SDPA per row with a block-diagonal causal mask."""
    b, hq, s, d = q.shape
    k = k.repeat_interleave(hq // k.shape[1], dim=1)
    v = v.repeat_interleave(hq // v.shape[1], dim=1)
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    mask = (causal[None] & same)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)


@pytest.mark.parametrize("give", ["cu_seqlens", "position_ids", "nothing"])
def test_registered_function_matches_block_diagonal_attention(give):
    torch.manual_seed(0)
    b, hq, hkv, s, d = 3, 4, 2, 10, 8
    q, k, v = torch.randn(b, hq, s, d), torch.randn(b, hkv, s, d), torch.randn(b, hkv, s, d)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2],
                        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                        [0, 0, 1, 0, 1, 2, 3, 4, 0, 1]])
    kwargs = {"cu_seqlens": varlen_kwargs(pos), "position_ids": {"position_ids": pos}, "nothing": {}}[give]
    out, weights = varlen_attention_forward(_Module(), q, k, v, None, scaling=0.3, **kwargs)
    assert weights is None and out.shape == (b, s, hq, d)
    if give == "nothing":  # one causal document per row
        doc_ids = torch.zeros(b, s, dtype=torch.long)
    else:
        doc_ids = (pos == 0).cumsum(-1)
    ref = _dense_block_causal(q, k, v, doc_ids, 0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and it really separates documents: plain causal attention over the row differs
    if give != "nothing":
        leaky = _dense_block_causal(q, k, v, torch.zeros(b, s, dtype=torch.long), 0.3)
        assert not torch.allclose(out, leaky, atol=1e-3)


def test_refuses_what_it_cannot_do():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(SlamError, match="dropout"):
        varlen_attention_forward(_Module(), q, q, q, None, dropout=0.1)
    with pytest.raises(SlamError, match="sliding"):
        varlen_attention_forward(_Module(), q, q, q, None, sliding_window=2)
    with pytest.raises(SlamError, match="cache"):
        varlen_attention_forward(_Module(), q[:, :, :1], q, q, None)


def test_registered_with_transformers():
    from transformers import AttentionInterface

    assert AttentionInterface()[ATTN_NAME] is varlen_attention_forward
    assert kernel_name(torch.device("cpu"), torch.bfloat16) == "reference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_kernel_matches_reference():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0] * 16, list(range(128))], device=dev)
    b, hq, hkv, s, d = 2, 14, 2, 128, 64
    q = torch.randn(b, hq, s, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(b, hkv, s, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
    m = _Module()
    m.num_key_value_groups = hq // hkv
    assert kernel_name(dev, torch.bfloat16) != "reference"
    out, _ = varlen_attention_forward(m, q, k, v, None, scaling=d ** -0.5, **varlen_kwargs(pos, dev))
    out.float().sum().backward()
    cu = varlen_kwargs(pos, dev)["cu_seq_lens_q"]
    # what the loader hands over with cu_bucket and a constant max length: empty documents, bound = row
    padded = torch.cat([cu, cu[-1:].repeat(7)])
    out2, _ = varlen_attention_forward(m, q, k, v, None, scaling=d ** -0.5, cu_seq_lens_q=padded,
                                       cu_seq_lens_k=padded, max_length_q=s, max_length_k=s)
    torch.testing.assert_close(out2.float(), out.float(), rtol=1e-3, atol=1e-3)
    flat = [t.detach().float().transpose(1, 2).reshape(b * s, t.shape[1], d) for t in (q, k, v)]
    ref = reference_varlen(*flat, cu, d ** -0.5).view(b, s, hq, d)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(q.grad).all()
