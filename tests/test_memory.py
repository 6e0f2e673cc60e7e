"""slam.train.memory: hand-worked numbers for the Slam shape, and the activation table against what autograd
really saves on a small Qwen2 (CPU, fp32 and bf16 autocast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slam.errors import ConfigError
from slam.train.memory import (GiB, ModelShape, check_micro, checkpoint_bytes, count_params, flops_per_token, largest_micro,
                               layer_activation_bytes, predict_memory, predict_tokens_per_second,
                               rest_activation_bytes)

# Qwen2.5-0.5B's config values with slam's 502-token vocabulary (bench/gpu.py builds the same shape).
SLAM = {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 502, "tie_word_embeddings": True}
N = 358_347_904


def test_slam_parameter_count_by_hand_and_by_transformers():
    # embeddings 502 x 896 = 449,792; per block q 896x896+896, k/v 2 x (896x128+128), o 896x896,
    # MLP 3 x 896 x 4864, 2 norms x 896 = 14,912,384; x 24 + final norm 896 = 358,347,904.
    s = ModelShape.from_config(SLAM)
    assert s.params == count_params(s) == 449_792 + 24 * 14_912_384 + 896 == N
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**SLAM)
    with torch.device("meta"):  # no 1.4 GB allocation: shapes only
        model = AutoModelForCausalLM.from_config(cfg)
    from slam.model import count_parameters

    assert count_parameters(model) == N


def test_slam_memory_by_hand():
    s = ModelShape.from_config(SLAM)
    # bf16, varlen kernel, per token and block: norms 2 x (3,584 + 3,584 + 4) = 14,344; five bf16 matmul
    # inputs 5 x 2 x 896 = 8,960; q, k, v, out 2 x (2 x 896 + 2 x 128) = 4,096 + lse 4 x 14 = 56; MLP
    # 4 x 2 x 4,864 = 38,912.
    assert layer_activation_bytes(s, 1024, "bf16", "varlen") == 14_344 + 8_960 + 4_152 + 38_912 == 66_368
    # ids 8, cos/sin 8 x 64, final norm 8 x 896 + 4, head input 2 x 896, log-softmax 4 x 502, labels 8
    assert rest_activation_bytes(s, "bf16") == 8 + 512 + 7_168 + 4 + 1_792 + 2_008 + 8 == 11_500
    p = predict_memory(s, 8, 1024, "bf16", "varlen")
    assert (p.weights, p.autocast, p.grads, p.optimizer, p.ddp_buckets) == (4 * N, 2 * N, 4 * N, 8 * N, 0)
    assert p.activations == 8192 * (24 * 66_368 + 11_500) == 13_142_687_744
    assert p.workspace == 8192 * (4 * 2 * 4864 + 8 * 896) and p.logits == 8192 * 10 * 502
    assert p.total == 18 * N + 13_142_687_744 + p.workspace + p.logits == 20_011_561_216  # 18.6 GiB
    # fp32 with the SDPA path (the CPU run of bench/full_shape.py): 2 x 7,172 + 2 x 4 x 896 + 4 x 4 x 896
    # + 56 + 4 x 1,024 (the mask) + 4 x 4 x 4,864 = 117,824 bytes per token and block
    assert layer_activation_bytes(s, 1024, "fp32", "sdpa") == 14_344 + 7_168 + 14_336 + 56 + 4_096 + 77_824
    assert checkpoint_bytes(s) == 12 * N == 4_300_174_848  # model 4 N + AdamW's two states 8 N
    f = predict_memory(s, 1, 1024, "fp32", "sdpa")
    assert f.autocast == 0 and f.states == 16 * N
    # two DDP processes add the reducer's buckets; two FSDP processes halve the states and gather one block
    assert predict_memory(s, 8, 1024, world=2).ddp_buckets == 4 * N
    sharded = predict_memory(s, 8, 1024, world=2, strategy="fsdp")
    assert sharded.optimizer == 4 * N and sharded.weights == 2 * N + 4 * 14_912_384


def test_slam_tokens_per_second_by_hand():
    s = ModelShape.from_config(SLAM)
    # 6N = 2,150,087,424 + attention 12 x 24 x 896 x 1025 / 2 = 132,249,600 FLOPs per token on full rows
    assert flops_per_token(s, 1024) == 2_282_337_024
    # an A100 (312 TFLOP/s) at the paper's ~34% MFU: 46.5k tokens/s, the ~48k per A100 it reported
    assert predict_tokens_per_second(s, 1024, 312.0, 0.34) == pytest.approx(46_478.67, rel=1e-6)
    assert predict_tokens_per_second(s, 1024, 989.0, 0.40, world=2) == pytest.approx(2 * 173_331.1, rel=1e-6)


def test_a_micro_that_cannot_fit_is_refused_with_the_one_that_would():
    s = ModelShape.from_config(SLAM)
    a5000 = 24 * GiB  # the paper's GPU; 21.6 GiB usable with 10% kept free
    assert check_micro(s, 8, 1024, a5000, divides=128).total == 20_011_561_216
    with pytest.raises(ConfigError, match=r"batch.micro: 16 x context 1024 needs ~31.3 GiB.*batch.micro=8 fits"):
        check_micro(s, 16, 1024, a5000, "NVIDIA RTX A5000", divides=128)
    assert largest_micro(s, 1024, a5000) == 9  # 9 fits without the divisibility constraint...
    assert largest_micro(s, 1024, a5000, divides=128) == 8  # ...but must divide the 128 rows of a step
    with pytest.raises(ConfigError, match="not even micro 1 fits"):
        check_micro(s, 1, 1024, 8 * GiB)  # 18 N = 6 GiB of states + 1.6 GiB of micro 1 > 7.2 GiB usable


# --- the activation table against autograd ------------------------------------------------------------------
def saved_bytes(model, batch, bf16: bool) -> int:
    """Bytes of the tensors autograd saves in one forward (each storage once, parameters and autocast's bf16
    weight copies left out: those are the `weights` and `autocast` lines, not activations)."""
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        is_weight_copy = t.dtype == torch.bfloat16 and t.dim() == 2 and tuple(t.shape) in weight_shapes
        if st.data_ptr() not in params and not is_weight_copy:
            seen[st.data_ptr()] = st.nbytes()
        return t

    from slam.data import causal_lm_loss

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            causal_lm_loss(model, batch)
    return sum(seen.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("hidden,inter,layers", [(128, 320, 2), (192, 512, 3)])
def test_activation_table_matches_what_autograd_saves(precision, hidden, inter, layers):
    from slam.data import to_batch
    from slam.model import random_init

    cfg = {"model_type": "qwen2", "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
           "tie_word_embeddings": True}
    model, info = random_init(cfg, 500, seed=0)
    model._slam_packing_checked = True  # CPU fp32 Qwen2 keeps SDPA (its probe passes): measure that path
    assert model.config._attn_implementation == "sdpa"
    rng = np.random.default_rng(0)
    b, ctx = 4, 256
    docs = [rng.integers(2, 500, n) for n in rng.integers(20, 200, 60)]
    ids = np.concatenate(docs)[:b * ctx].reshape(b, ctx)
    pos = np.concatenate([np.arange(len(d)) for d in docs])[:b * ctx].reshape(b, ctx)
    batch = to_batch(ids, pos, ids.copy())
    got = saved_bytes(model, batch, precision == "bf16")
    shape = ModelShape.from_config(model.config)
    p = predict_memory(shape, b, ctx, precision, "sdpa")
    # exact up to the last row's log-softmax row per sequence (the loss predicts S-1 of S positions)
    assert got == pytest.approx(p.activations, rel=2e-3), (got, p.activations)
    assert got <= p.activations


def test_plan_for_run_prints_the_prediction_of_the_run_and_its_throughput_at_a_given_peak():
    from slam.model import random_init
    from slam.train.config import load
    from slam.train.dist import Env
    from slam.train.memory import plan_for_run

    cfg = load("tiny-cpu", ["peak_tflops=100", "batch.micro=8", "batch.size=16", "data.context=256"])
    model, _ = random_init(dict(cfg.model.config), 500, seed=0)
    line = plan_for_run(cfg, model, Env())
    shape = ModelShape.from_config(model.config, params=sum(p.numel() for p in model.parameters()))
    want = predict_memory(shape, 8, 256, "fp32", "sdpa")  # a CPU run: fp32, transformers' SDPA path
    assert line.startswith(f"predicted memory {want.total / GiB:.1f} GiB per process (fp32, sdpa attention)")
    tok = predict_tokens_per_second(shape, 256, 100.0)
    assert f"at 34% MFU of 100 TFLOP/s x 1: ~{tok / 1e3:.0f}k tokens/s" in line
