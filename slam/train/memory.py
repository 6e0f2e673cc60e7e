"""Predicted memory and throughput of a training run, before the first step: what fits, and how fast it can go.

Memory of one process at its peak (the backward of the first micro-batch after an optimiser step), in bytes:

    weights       4 N                 fp32 master weights (bf16 runs autocast; nothing is stored in bf16)
    autocast      2 N                 bf16 only: autocast caches one bf16 copy of every matmul weight for the
                                      forward + backward of a micro-batch (a tied table is cast once, as the head)
    grads         4 N                 fp32, kept across the micro-batches of an accumulation
    optimiser     4 N x states        AdamW 2 (exp_avg, exp_avg_sq), AdEMAMix 3, Muon 1 on hidden matrices
    DDP buckets   4 N                 world > 1 with DDP: the reducer's flat gradient buckets
    activations   T x (L x layer + rest)   T = micro x context tokens; what autograd saves, below
    workspace     T x (4 e i + 8 h)   backward temporaries of one block: the gradients of the MLP's four
                                      [T, i] tensors and two fp32 [T, h] residual gradients at once
    logits        T x (e + 8) V       the loss's transient logits: the head's output, its fp32 copy and slice

FSDP divides weights, grads, optimiser state (and the autocast copies) by the world size and adds one
gathered block. Saved activations per token and layer, for a Qwen2/Llama block (RMSNorm, GQA attention with
RoPE, SwiGLU MLP), with e = activation bytes (2 under bf16 autocast, 4 in fp32); read off autograd's saved
tensors of transformers 5.x and checked against them in tests/test_memory.py:

    norms      2 x (4h + 4h + 4)    each RMSNorm keeps its fp32 input, its normalised fp32 output and 1/rms:
                                    the residual stream stays fp32 under autocast (the embedding is fp32)
    matmul in  bf16: 5 e h          autocast casts the normed input once per linear (q, k, v; gate, up)
               fp32: 2 x 4h         the weighted norm output, shared by q/k/v and by gate/up
    attention  varlen: e (2 Hq d + 2 Hkv d) + 4 Hq    the FlashAttention-2 varlen kernel keeps q, k, v, out
                                                      and the fp32 log-sum-exp; out is o_proj's input
               sdpa:   4 e Hq d + 4 Hq + e S          transformers' SDPA on packed rows (CPU): K/V repeated
                                                      to the query heads (repeat_kv), out, lse, and the
                                                      dense [S, S] document mask, one copy per layer
    mlp        4 e i                gate output, SiLU output, up output, their product (down_proj's input)
    rest       8 + 8d + 8h + 4 + mh + 4V + 8     input ids, RoPE cos/sin (fp32), final norm, its matmul
                                    input (mh = e h under autocast, 4h in fp32), log-softmax (fp32), labels

For the Slam shape (h 896, L 24, 14/2 heads of 64, i 4864, V 502, N = 358,347,904) at bf16 with the varlen
kernel that is 66,368 bytes per token and layer, 1.6 MB per token with the rest: 12.2 GiB of activations at
micro 8 x 1024 and 18.6 GiB in all, which fits the paper's 24 GB A5000 (21.6 GiB usable); micro 16 needs
31.3 GiB and is refused with a pointer to micro 8.

Throughput at a GPU's peak: tokens/s = MFU x peak / FLOPs per token, with slam.train.flops's count (6N plus
the causal attention term on full rows, the conservative case). The default MFU, 0.34, is what the paper's
scaled run reached (16.7B tokens on 2 A100s in 48 h, ~48k tokens/s per A100).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from slam.errors import ConfigError
from slam.train.flops import PEAK_TFLOPS, batch_flops

GiB = 2**30
# The paper's scaled Slam run: 16.7B tokens on 2x A100 in 48 h = ~48k tokens/s per A100 at 2.28 GFLOP/token
# = 110 TFLOP/s of the A100's 312: ~34% MFU. A measured figure, so the default prediction is not optimistic.
DEFAULT_MFU = 0.34
# Keep 10% of the device free: the CUDA context (~0.5 GiB), NCCL buffers and the caching allocator's
# fragmentation are not in the formula, and a prediction that fills the card to the byte would be a lie.
HEADROOM = 0.10
OPTIMIZER_STATES = {"adamw": 2, "ademamix": 3, "muon": 1}

Precision = Literal["bf16", "fp32"]
Attention = Literal["varlen", "sdpa"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set memory and FLOPs of a decoder-only LM with a gated MLP (Qwen2, Llama)."""

    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any, params: int | None = None) -> "ModelShape":
        """From an HF config (object or dict); `params` defaults to the analytic count of `count_params`."""
        get = (lambda k, d=None: config.get(k, d)) if isinstance(config, dict) else \
            (lambda k, d=None: getattr(config, k, d))
        hidden, heads = int(get("hidden_size")), int(get("num_attention_heads"))
        head_dim = int(get("head_dim") or hidden // heads)
        shape = cls(params=0, layers=int(get("num_hidden_layers")), hidden=hidden, heads=heads,
                    kv_heads=int(get("num_key_value_heads") or heads), head_dim=head_dim,
                    intermediate=int(get("intermediate_size")), vocab=int(get("vocab_size")))
        if params is None:
            bias = get("attention_bias", None)
            bias = get("model_type") == "qwen2" if bias is None else bool(bias)  # Qwen2 has q/k/v biases
            params = count_params(shape, qkv_bias=bias, tied=bool(get("tie_word_embeddings", False)))
        return cls(**{**shape.__dict__, "params": int(params)})


def count_params(s: ModelShape, qkv_bias: bool = True, tied: bool = True) -> int:
    """Unique parameters of a Qwen2/Llama-shaped model (a tied head counts once)."""
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    attn = s.hidden * q + 2 * s.hidden * kv + q * s.hidden + ((q + 2 * kv) if qkv_bias else 0)
    block = attn + 3 * s.hidden * s.intermediate + 2 * s.hidden  # + q/k/v/o, gate/up/down, 2 RMSNorm weights
    return s.vocab * s.hidden * (1 if tied else 2) + s.layers * block + s.hidden


def layer_activation_bytes(s: ModelShape, context: int, precision: Precision = "bf16",
                           attention: Attention = "varlen") -> int:
    """Bytes autograd saves per token in one block (the table of the module docstring)."""
    e = 2 if precision == "bf16" else 4
    h, i = s.hidden, s.intermediate
    norms = 2 * (4 * h + 4 * h + 4)
    matmul_in = 5 * e * h if precision == "bf16" else 2 * 4 * h
    if attention == "varlen":
        attn = e * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim) + 4 * s.heads
    elif attention == "sdpa":
        attn = 4 * e * s.heads * s.head_dim + 4 * s.heads + e * context
    else:
        raise ValueError(f"unknown attention path {attention!r}")
    return norms + matmul_in + attn + 4 * e * i


def rest_activation_bytes(s: ModelShape, precision: Precision = "bf16") -> int:
    """Bytes saved per token outside the blocks: ids, RoPE tables, final norm, head input, log-softmax, labels."""
    e = 2 if precision == "bf16" else 4
    head_in = e * s.hidden if precision == "bf16" else 4 * s.hidden
    return 8 + 8 * s.head_dim + 8 * s.hidden + 4 + head_in + 4 * s.vocab + 8


@dataclass
class MemoryPrediction:
    weights: int
    autocast: int
    grads: int
    optimizer: int
    ddp_buckets: int
    activations: int
    workspace: int
    logits: int
    micro: int
    context: int
    precision: str
    attention: str

    @property
    def total(self) -> int:
        return (self.weights + self.autocast + self.grads + self.optimizer + self.ddp_buckets + self.activations
                + self.workspace + self.logits)

    @property
    def states(self) -> int:
        """Everything that does not scale with the micro-batch."""
        return self.weights + self.autocast + self.grads + self.optimizer + self.ddp_buckets

    def summary(self) -> str:
        parts = [("weights", self.weights), ("grads", self.grads), ("optimiser", self.optimizer)]
        if self.autocast:
            parts.append(("bf16 weight copies", self.autocast))
        if self.ddp_buckets:
            parts.append(("DDP buckets", self.ddp_buckets))
        parts += [(f"activations at micro {self.micro} x {self.context}", self.activations),
                  ("backward workspace + logits", self.workspace + self.logits)]
        return (f"predicted memory {self.total / GiB:.1f} GiB per process ({self.precision}, {self.attention} "
                f"attention): " + ", ".join(f"{k} {v / GiB:.2f}" for k, v in parts))


def predict_memory(s: ModelShape, micro: int, context: int, precision: Precision = "bf16",
                   attention: Attention = "varlen", optimizer: str = "adamw", world: int = 1,
                   strategy: str = "ddp") -> MemoryPrediction:
    """Peak memory of one training process (module docstring)."""
    n = s.params
    shard = world if strategy == "fsdp" and world > 1 else 1
    e = 2 if precision == "bf16" else 4
    tokens = micro * context
    block_params = (n - s.vocab * s.hidden - s.hidden) // max(s.layers, 1)  # less embeddings, final norm
    gathered = 4 * block_params if shard > 1 else 0  # FSDP: one block's full weights while it runs
    return MemoryPrediction(
        weights=4 * n // shard + gathered,
        autocast=(2 * n // shard + 2 * block_params if shard > 1 else 2 * n) if precision == "bf16" else 0,
        grads=4 * n // shard + gathered,
        optimizer=4 * n * OPTIMIZER_STATES.get(optimizer, 2) // shard,
        ddp_buckets=4 * n if world > 1 and strategy == "ddp" else 0,
        activations=tokens * (s.layers * layer_activation_bytes(s, context, precision, attention)
                              + rest_activation_bytes(s, precision)),
        workspace=tokens * (4 * e * s.intermediate + 8 * s.hidden),
        logits=tokens * (e + 8) * s.vocab,
        micro=micro, context=context, precision=precision, attention=attention)


def checkpoint_bytes(s: ModelShape, optimizer: str = "adamw") -> int:
    """A slam checkpoint's size: fp32 model.safetensors (a tied table stored once) + the optimiser's fp32
    states in optimizer.pt; headers, the step counters, rng.pt and state.json add well under 1 MB."""
    return 4 * s.params * (1 + OPTIMIZER_STATES.get(optimizer, 2))


def flops_per_token(s: ModelShape, context: int) -> float:
    """Training FLOPs per token on full rows (every document as long as the context: the upper bound)."""
    return batch_flops(s.params, context, context * (context + 1) // 2, s.layers, s.heads * s.head_dim) / context


def predict_tokens_per_second(s: ModelShape, context: int, peak_tflops: float, mfu: float = DEFAULT_MFU,
                              world: int = 1) -> float:
    """Tokens/s of `world` devices of `peak_tflops` each running at model FLOPs utilisation `mfu`."""
    return world * mfu * peak_tflops * 1e12 / flops_per_token(s, context)


def fits(pred: MemoryPrediction, device_bytes: int) -> bool:
    return pred.total <= (1 - HEADROOM) * device_bytes


def largest_micro(s: ModelShape, context: int, device_bytes: int, divides: int | None = None,
                  **kw: Any) -> int | None:
    """The largest micro-batch that fits (and divides `divides`, the sequences per process per step), or None."""
    best = None
    top = divides if divides else 4096
    for m in range(1, top + 1):
        if divides and divides % m:
            continue
        if not fits(predict_memory(s, m, context, **kw), device_bytes):
            break
        best = m
    return best


def check_micro(s: ModelShape, micro: int, context: int, device_bytes: int, device_name: str = "the device",
                divides: int | None = None, **kw: Any) -> MemoryPrediction:
    """The prediction, or ConfigError naming batch.micro and the micro that would fit."""
    pred = predict_memory(s, micro, context, **kw)
    if fits(pred, device_bytes):
        return pred
    best = largest_micro(s, context, device_bytes, divides=divides, **kw)
    budget = (1 - HEADROOM) * device_bytes
    if best is None:
        hint = (f"not even micro 1 fits ({predict_memory(s, 1, context, **kw).total / GiB:.1f} GiB): use a "
                f"shorter data.context, dist.strategy=fsdp on more devices, or a smaller model")
    else:
        hint = (f"batch.micro={best} fits ({predict_memory(s, best, context, **kw).total / GiB:.1f} GiB; the "
                f"accumulation grows to keep batch.size)")
    raise ConfigError(f"batch.micro: {micro} x context {context} needs ~{pred.total / GiB:.1f} GiB per process, "
                      f"more than {budget / GiB:.1f} GiB usable of {device_name}'s {device_bytes / GiB:.1f} GiB "
                      f"({100 * HEADROOM:.0f}% kept free); {hint}. {pred.summary()}")


def device_memory(device: Any) -> tuple[int | None, str]:
    """(bytes, name) of a CUDA device's memory, or of the host's RAM for a CPU run (Linux); None if unknown."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).total_memory), torch.cuda.get_device_name(dev)
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        return kb * 1024, "this host's RAM"
    except (OSError, StopIteration):
        return None, "cpu"


def peak_for(name: str) -> float | None:
    """Published bf16 dense peak of a GPU name from slam.train.flops's table (longest key first)."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_TFLOPS[key]
    return None


def plan_for_run(cfg: Any, model: Any, env: Any, mfu: float = DEFAULT_MFU) -> str:
    """Check a run's batch.micro against its device's memory (ConfigError if it cannot fit) and return one
    line: the predicted memory and, on a GPU of known peak, the predicted tokens/s. `cfg` is a TrainConfig,
    `model` the bare HF model (before wrapping), `env` slam.train.dist.Env."""
    from slam.model import count_parameters

    shape = ModelShape.from_config(model.config, params=count_parameters(model))
    cuda = env.device.type == "cuda"
    precision = "bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and cuda) else "fp32"
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    attention = "varlen" if cuda or impl in ("slam_varlen", "flash_attention_2") else "sdpa"
    kw = dict(precision=precision, attention=attention, optimizer=cfg.optim.name, world=env.world,
              strategy=cfg.dist.strategy)
    total, name = device_memory(env.device)
    if total is not None and not cuda:  # the processes of a CPU run share the host's RAM
        total //= int(os.environ.get("LOCAL_WORLD_SIZE", env.world))
    per_process = cfg.batch.size // env.world
    if total is not None:
        pred = check_micro(shape, cfg.batch.micro, cfg.data.context, total, name, divides=per_process, **kw)
    else:
        pred = predict_memory(shape, cfg.batch.micro, cfg.data.context, **kw)
    line = pred.summary()
    peak = cfg.peak_tflops or (peak_for(name) if cuda else None)
    if peak:
        tok = predict_tokens_per_second(shape, cfg.data.context, peak, mfu, env.world)
        line += (f"; at {100 * mfu:.0f}% MFU of {peak:g} TFLOP/s x {env.world}: ~{tok / 1e3:.0f}k tokens/s "
                 f"({flops_per_token(shape, cfg.data.context) / 1e9:.2f} GFLOP/token)")
    return line


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
