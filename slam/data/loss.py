"""The token-weighted causal LM loss of a packed batch, and a validation helper.

Token-weighted on purpose: (sum of token NLLs, number of predicted tokens) per micro-batch, so the training
loop sums both over micro-batches and ranks and divides once: gradient accumulation equals one big batch.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
import torch.nn.functional as F

from slam.attention import ATTN_NAME, packing_leaks, use_varlen_attention
from slam.data.packing import IGNORE, batch_to

# --- loss ----------------------------------------------------------------------------------------------------
def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside DDP / torch.compile wrappers (for its config)."""
    while not hasattr(model, "config") and hasattr(model, "module"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _ensure_packing_safe(hf: torch.nn.Module) -> None:
    """Once per model: if its attention path would let packed documents see each other (OPT on SDPA, any
    model not in float32...), switch it to "slam_varlen", which is exact everywhere. Costs one forward of
    11 tokens; a loop that already called slam.attention.prepare_packed_attention skips it."""
    if getattr(hf.config, "_attn_implementation", None) != ATTN_NAME:
        with torch.autocast(next(hf.parameters()).device.type, enabled=False):
            leaks = packing_leaks(hf)
        if leaks:
            warnings.warn(f"{type(hf).__name__}: its {hf.config._attn_implementation} attention path lets packed "
                          f"documents attend to each other; switching to {ATTN_NAME}", stacklevel=3)
            use_varlen_attention(hf)
    hf._slam_packing_checked = True


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token NLLs, number of predicted tokens) of a packed batch.

    Token-weighted on purpose: the loop sums both over micro-batches (and ranks) and divides once by the
    global token count, so gradient accumulation equals one big batch exactly. Always `use_cache=False`, never
    an attention_mask (an all-ones mask disables transformers' packing detection); the varlen boundaries are
    passed only to models running "slam_varlen" attention. The first call on a model checks that its
    attention path keeps packed documents apart (and switches to "slam_varlen" if not).
    """
    hf = _hf_model(model)
    if not getattr(hf, "_slam_packing_checked", False):
        _ensure_packing_safe(hf)
    kwargs: dict[str, Any] = {}
    if getattr(hf.config, "_attn_implementation", None) == ATTN_NAME:
        kwargs = {k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                   **kwargs).logits
    labels = batch["labels"][:, 1:]
    logits = logits[:, :-1]
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    return loss_sum, (labels != IGNORE).sum()


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: Iterable[dict[str, Any]], device: torch.device | str = "cpu",
                  max_batches: int | None = None) -> tuple[float, int]:
    """Mean per-token loss over batches (e.g. a one-epoch validation PackedLoader) and its token count."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        loss_sum, n = causal_lm_loss(model, batch_to(batch, device))
        total += float(loss_sum)
        count += int(n)
    model.train(was_training)
    return (total / count if count else float("nan")), count
