"""The GPU check: one command that proves or disproves slam's whole GPU path on the Slam shape, in minutes.

    .venv/bin/python bench/gpu.py                       # on a GPU machine, ~8 minutes, no downloads
    .venv/bin/python bench/gpu.py --dry                 # the same code at a tiny shape on a CPU (CI), ~30 s
    # HF Trainer baseline needs `accelerate` (not a slam dependency), e.g.
    #   .venv/bin/pip install --no-deps --target /tmp/bench-deps accelerate==1.15.0 psutil
    #   PYTHONPATH=/tmp/bench-deps .venv/bin/python bench/gpu.py

The Slam shape is Qwen2.5-0.5B's config (hidden 896, 24 layers, 14 query / 2 KV heads of 64, MLP 4864, tied
embeddings) with slam's 502-token vocabulary and RoPE theta 1e4, random weights: 358,347,904 parameters.
Every figure is measured in this process, in this order, and written as one markdown table (`--out`):

1. kernel   the varlen attention slam's packed rows use (slam.attention.varlen_attention_forward) against the
            per-document reference in fp32, forward and backward, bf16, micro x context tokens of documents of
            mixed lengths: max abs difference next to the bf16 per-document SDPA's own, and a leak check
            (perturbing one document's keys/values must leave every other document's output bit-identical).
            Plus which kernel the training forward really reaches (q's dtype after RoPE under autocast).
2. train    `slam train`'s own loop (bf16 autocast, micro 8 x 1024, accumulation 2) with compile off and on,
            against HF Trainer + DataCollatorWithFlattening (flash_attention_2 when flash-attn is installed,
            SDPA otherwise, said so) on the same model shape, documents and tokens per step, alternating
            `--repeats` times; tokens/s, MFU (slam.train.flops against the GPU's published bf16 peak), peak
            memory next to slam.train.memory's prediction; and the largest micro that memory predicts fits.
3. dpo      slam's DPO step (slam.train.dpo loss on packed pairs, frozen reference) in pairs/s.
4. generate slam.generate.sample_units with the recipe's sampling (temperature 0.8, top-k 25), units/s.
5. fsdp     slam's train_step on FSDP2 (fully_shard per block, one process) against the unsharded step that
            DDP runs on each rank: the first steps' losses; with more than one GPU also `slam train` under
            torchrun with dist.strategy ddp and fsdp on all GPUs.
"""

from __future__ import annotations

import os
import sys

# Run as a file, Python puts bench/ first on sys.path, where bench modules would shadow standard ones (see
# bench/train.py); the repository root goes in its place so that bench/train.py's data maker loads.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse
import copy
import datetime
import json
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import slam.attention as attention
from slam.attention import cu_seqlens_from_position_ids, prepare_packed_attention, reference_varlen
from slam.data import causal_lm_loss
from slam.generate import sample_units
from slam.model import count_parameters, random_init
from slam.tokens import SlamInfo
from slam.train import dist
from slam.train.budget import Budget
from slam.train.config import Optim
from slam.train.config import load as load_recipe
from slam.train.dpo import Metrics, make_loss_fn
from slam.train.engine import train_step
from slam.train.flops import peak_tflops
from slam.train.memory import GiB, ModelShape, largest_micro, predict_memory
from slam.train.optim import build_optimizer
from slam.train.pairs import collate, encode_pairs, to_device
from slam.train.pretrain import train

ROOT = Path(__file__).resolve().parent.parent
N_UNITS = 500
SLAM_CONFIG = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
               "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
               "tie_word_embeddings": True}
# --dry: the same 7:1 query/KV head ratio as the Slam shape, 2 layers, context 128: seconds on a CPU.
TINY_CONFIG = {"model_type": "qwen2", "hidden_size": 112, "intermediate_size": 192, "num_hidden_layers": 2,
               "num_attention_heads": 7, "num_key_value_heads": 1, "max_position_embeddings": 256,
               "tie_word_embeddings": True}




@dataclass
class Setup:
    """The shapes of one check: the Slam shape on a GPU, a tiny one with --dry."""

    config: dict
    context: int
    micro: int
    accum: int
    steps: int
    warmup: int
    dpo_micro: int
    dpo_steps: int
    prompt_len: int
    completion_len: int
    gen_prompts: int
    gen_tokens: int
    doc_lengths: tuple[int, int]
    device: torch.device

    @property
    def shape(self) -> ModelShape:
        return ModelShape.from_config({**self.config, "vocab_size": SlamInfo(n_units=N_UNITS).vocab_size})


def setup(dry: bool) -> Setup:
    if dry:  # seconds on 2 CPU cores
        return Setup(TINY_CONFIG, 128, 2, 2, 4, 1, 2, 3, 20, 30, 4, 16, (5, 60), torch.device("cpu"))
    # The recipe: micro 8 x 1024 (the paper's per-device batch), accumulation 2 keeps a step at 16 rows; 12
    # steps of which the first 4 (compile, allocator warm-up) are not timed. DPO: the paper's 4 pairs per
    # forward, SpokenSwag-like ~100-token prompts and ~150-token endings. Generation: 32 prompts of 3 s
    # (~75 units at 25 Hz) continued by the GenPPL protocol's 150 units.
    return Setup(SLAM_CONFIG, 1024, 8, 2, 12, 4, 4, 8, 100, 150, 32, 150, (20, 600), torch.device("cuda"))


# --- environment ----------------------------------------------------------------------------------------------
def environment(dev: torch.device) -> dict[str, str]:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "CUDA": str(torch.version.cuda), "flash-attn": "installed" if attention._flash_varlen_func else "not installed",
           "torch varlen_attn": "available" if attention._torch_varlen_attn else "missing (torch < 2.10)",
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        env["GPU"] = f"{torch.cuda.get_device_name(dev)} x {torch.cuda.device_count()}, {props.total_memory / GiB:.0f} GiB"
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.split("\n")[0].strip()
        except (OSError, subprocess.TimeoutExpired):
            env["driver"] = "unknown (no nvidia-smi)"
        peak = peak_tflops(dev)
        env["bf16 peak"] = f"{peak:g} TFLOP/s (slam.train.flops table)" if peak else "unknown: not in the table, no MFU"
    else:
        env["GPU"] = f"none (--dry on {platform.machine()} CPU, {os.cpu_count()} cores)"
        env["driver"] = "n/a"
        env["bf16 peak"] = "n/a (no published peak for a CPU: no MFU)"
    return env


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    import gc

    gc.collect()  # the previous run's model and optimiser, so that this run's peak is its own
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory(dev: torch.device) -> int:
    """Peak bytes allocated by torch on the GPU since the last reset; on a CPU the process's peak RSS."""
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(s: Setup, seed: int = 0, attn: str | None = "sdpa") -> torch.nn.Module:
    model, _ = random_init(dict(s.config), N_UNITS, rope_theta=10000.0, seed=seed, attn_implementation=attn)
    model.config.use_cache = False
    return model.to(s.device)


def packed_positions(rng: np.random.Generator, rows: int, context: int, lengths: tuple[int, int]) -> np.ndarray:
    """[rows, context] per-document positions of documents of random lengths, cut at every row end."""
    pos = np.zeros((rows, context), dtype=np.int64)
    for r in range(rows):
        i = 0
        while i < context:
            n = min(int(rng.integers(*lengths)), context - i)
            pos[r, i:i + n] = np.arange(n)
            i += n
    return pos


def packed_batch(rng: np.random.Generator, s: Setup, rows: int) -> dict:
    from slam.data import to_batch

    pos = packed_positions(rng, rows, s.context, s.doc_lengths)
    ids = rng.integers(2, N_UNITS + 2, size=pos.shape)
    ids[pos == 0] = 1  # every document opens with <s>, as the loader writes it
    return to_batch(ids, pos, ids.copy())


# --- 1. kernel ------------------------------------------------------------------------------------------------
def kernel_check(s: Setup) -> dict:
    """slam's varlen attention at the Slam shape against the per-document reference, forward and backward."""
    sh, dev = s.shape, s.device
    rng = np.random.default_rng(0)
    pos = packed_positions(rng, s.micro, s.context, s.doc_lengths)
    cu_np, _ = cu_seqlens_from_position_ids(pos)
    cu = torch.from_numpy(cu_np).to(dev)
    b, t = s.micro, s.micro * s.context
    g = torch.Generator(device="cpu").manual_seed(0)
    q0 = torch.randn(t, sh.heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    k0 = torch.randn(t, sh.kv_heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    v0 = torch.randn(t, sh.kv_heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    grad_out = torch.randn(t, sh.heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    scale = sh.head_dim ** -0.5

    def slam_kernel(q, k, v):  # through the transformers attention-interface wrapper, [B, H, S, D] in
        def four(x):
            return x.view(b, s.context, x.shape[1], sh.head_dim).transpose(1, 2)

        out, _ = attention.varlen_attention_forward(None, four(q), four(k), four(v), None, scaling=scale,
                                                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=s.context,
                                                    max_length_k=s.context)
        return out.reshape(t, sh.heads, sh.head_dim)

    def run(fn, dtype):
        q, k, v = (x.detach().to(dtype).requires_grad_() for x in (q0, k0, v0))
        out = fn(q, k, v)
        (out.float() * grad_out.float()).sum().backward()
        return out.detach().float(), [x.grad.float() for x in (q, k, v)]

    truth, truth_g = run(lambda q, k, v: reference_varlen(q, k, v, cu, scale), torch.float32)
    ref16, ref16_g = run(lambda q, k, v: reference_varlen(q, k, v, cu, scale), torch.bfloat16)
    sync(dev)
    t0 = time.perf_counter()
    got, got_g = run(slam_kernel, torch.bfloat16)
    sync(dev)
    kernel_s = time.perf_counter() - t0

    def err(a, b_):
        return float((a - b_).abs().max())

    # Leak: new keys/values for one document in the middle of row 0; nothing outside it may move by one bit.
    docs = list(zip(cu_np[:-1], cu_np[1:]))
    a, e = docs[min(1, len(docs) - 1)]
    k1, v1 = k0.clone(), v0.clone()
    k1[a:e] = torch.randn(e - a, sh.kv_heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    v1[a:e] = torch.randn(e - a, sh.kv_heads, sh.head_dim, generator=g).to(dev, torch.bfloat16)
    with torch.no_grad():
        base = slam_kernel(q0, k0, v0).float()
        moved = slam_kernel(q0, k1, v1).float()
    outside = torch.ones(t, dtype=torch.bool, device=dev)
    outside[a:e] = False
    return {"name": attention.kernel_name(dev, torch.bfloat16), "tokens": t, "documents": len(docs),
            "fwd": err(got, truth), "fwd_ref16": err(ref16, truth),
            "bwd": max(err(x, y) for x, y in zip(got_g, truth_g)),
            "bwd_ref16": max(err(x, y) for x, y in zip(ref16_g, truth_g)),
            "leak": float((moved - base)[outside].abs().max()), "own_change": float((moved - base)[a:e].abs().max()),
            "seconds": kernel_s}


@contextmanager
def recording_kernel_choice(seen: list):
    """Record every (kernel, query dtype) that slam's varlen attention picks while the block runs."""
    real = attention.kernel_name

    def spy(device, dtype):
        name = real(device, dtype)
        seen.append((name, str(dtype).replace("torch.", "")))
        return name

    attention.kernel_name = spy
    try:
        yield
    finally:
        attention.kernel_name = real


def training_forward_kernel(s: Setup) -> dict:
    """Which kernel the training forward reaches: the varlen path (what CUDA training uses) under bf16 autocast."""
    model = build(s, attn="sdpa")
    attention.use_varlen_attention(model)
    model._slam_packing_checked = True
    batch = {k: v.to(s.device) if torch.is_tensor(v) else v
             for k, v in packed_batch(np.random.default_rng(1), s, s.micro).items()}
    seen: list = []
    with recording_kernel_choice(seen), torch.autocast(s.device.type, dtype=torch.bfloat16):
        loss, n = causal_lm_loss(model, batch)
    (loss / n).backward()
    return {"choices": sorted(set(seen)), "calls": len(seen)}


# --- 2. training throughput ----------------------------------------------------------------------------------
@contextmanager
def compile_backend(backend: str):
    """slam compiles each block with `block.compile(dynamic=False)`, i.e. inductor; --dry swaps the backend:
    inductor's CPU codegen (C++, one g++ call per kernel) took 2.5 min cold for the tiny model on 2 busy cores
    and is not the GPU's (Triton), while dynamo's capture and AOT autograd, which aot_eager runs, are shared."""
    if backend == "inductor":
        yield
        return
    real = torch.nn.Module.compile

    def compile(self, *args, **kwargs):
        return real(self, *args, **{**kwargs, "backend": backend})

    torch.nn.Module.compile = compile
    try:
        yield
    finally:
        torch.nn.Module.compile = real


def slam_run(s: Setup, data: Path, out: Path, compile: bool, micro: int) -> dict:
    """`slam train` itself (its loop, loader, clock and FLOPs accounting), bf16 autocast."""
    import torch._dynamo

    cfg = load_recipe("tiny-cpu", [
        f"data.train=[{{path: {data}}}]", f"out={out}", f"data.context={s.context}", "data.val_fraction=0.01",
        f"model.config={json.dumps(s.config)}", f"batch.size={micro * s.accum}", f"batch.micro={micro}",
        "budget.time=null", f"budget.steps={s.steps}", "optim.lr=1e-3", "schedule.warmup_min_steps=1",
        "schedule.min_lr=0", "precision=bf16", f"compile={'true' if compile else 'false'}", "log_every=1",
        "eval.every_steps=0", "eval.batches=1", "checkpoint.every_steps=0", "checkpoint.every_minutes=0"])
    torch._dynamo.reset()
    graphs0 = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    attn: list[str] = []

    def loss_fn(model, batch):
        if not attn:
            attn.append(str(getattr(dist.unwrap(model).config, "_attn_implementation", "?")))
        return causal_lm_loss(model, batch)

    reset_peak(s.device)
    t0 = time.perf_counter()
    train(cfg, loss_fn=loss_fn)
    wall = time.perf_counter() - t0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    tr = {r["step"]: r for r in rows if r["kind"] == "train"}
    done = [r for r in rows if r["kind"] == "event" and r.get("event") == "done"][0]
    a, b = tr[s.warmup], tr[s.steps]
    seconds = (b["train_hours"] - a["train_hours"]) * 3600
    peak = peak_tflops(s.device)
    flops_s = (b["flops"] - a["flops"]) / seconds
    shutil.rmtree(out, ignore_errors=True)
    return {"tok_s": (b["tokens"] - a["tokens"]) / seconds, "mfu": flops_s / (peak * 1e12) if peak else None,
            "peak_bytes": peak_memory(s.device), "losses": [tr[i]["loss"] for i in sorted(tr)], "wall_s": wall,
            "compile_s": done["overhead"].get("compile", 0.0), "attn": attn[0] if attn else "?",
            "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs0, "micro": micro}


def documents(data: Path, context: int) -> list[list[int]]:
    """The units dataset's documents as model ids, cut to the context as slam's loader cuts them."""
    from slam.units.dataset import iter_rows

    info = SlamInfo(n_units=N_UNITS)
    docs: list[list[int]] = []
    for row in iter_rows(data, ["id", "units"]):
        ids = info.units_to_ids(row["units"])
        docs.extend(ids[i:i + context].tolist() for i in range(0, len(ids), context))
    return docs


def hf_run(s: Setup, docs: list[list[int]], out: Path) -> dict:
    """HF Trainer + DataCollatorWithFlattening on the same shape, documents and tokens per step."""
    try:
        import accelerate  # noqa: F401  (Trainer needs it; slam does not)
    except ImportError:
        return {"skip": "not run: `accelerate` is not installed (the Trainer needs it; see the module docstring)"}
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    flash = s.device.type == "cuda" and attention._flash_varlen_func is not None
    impl = "flash_attention_2" if flash else "sdpa"
    model = build(s, attn=impl)
    docs = list(docs)
    np.random.default_rng(0).shuffle(docs)
    mean_len = float(np.mean([len(d) for d in docs]))
    per_device = max(1, round(s.micro * s.context / mean_len))  # ~ the tokens of one slam micro-batch

    class Docs(torch.utils.data.Dataset):
        def __len__(self):
            return len(docs)

        def __getitem__(self, i):
            return {"input_ids": docs[i]}

    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            sync(s.device)
            marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))

    args = TrainingArguments(
        output_dir=str(out), use_cpu=s.device.type != "cuda", bf16=True, per_device_train_batch_size=per_device,
        gradient_accumulation_steps=s.accum, max_steps=s.steps, learning_rate=1e-3, lr_scheduler_type="cosine",
        warmup_steps=0, max_grad_norm=0.5, optim="adamw_torch_fused", weight_decay=0.0, logging_steps=10_000,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0,
        include_num_input_tokens_seen="all", remove_unused_columns=False)
    collator = DataCollatorWithFlattening(return_position_ids=True, return_flash_attn_kwargs=flash)
    trainer = Trainer(model=model, args=args, train_dataset=Docs(), data_collator=collator, callbacks=[Clock()])
    reset_peak(s.device)
    trainer.train()
    (t0, k0), (t1, k1) = marks[s.warmup - 1], marks[s.steps - 1]
    tok_s = (k1 - k0) / (t1 - t0)
    # FLOPs as slam counts them: 6N per token + the causal pairs of these documents (mean pairs per token)
    pairs_per_token = sum(len(d) * (len(d) + 1) / 2 for d in docs) / sum(len(d) for d in docs)
    sh, peak = s.shape, peak_tflops(s.device)
    flops_tok = 6 * count_parameters(model) + 12 * sh.layers * sh.heads * sh.head_dim * pairs_per_token
    del trainer, model
    shutil.rmtree(out, ignore_errors=True)
    return {"tok_s": tok_s, "mfu": tok_s * flops_tok / (peak * 1e12) if peak else None, "impl": impl,
            "peak_bytes": peak_memory(s.device), "examples": per_device}


# --- 3. DPO, 4. generation -----------------------------------------------------------------------------------
def dpo_run(s: Setup) -> dict:
    """slam's DPO step: policy + frozen reference, packed pairs, the loop's train_step, bf16 autocast."""
    from types import SimpleNamespace

    info = SlamInfo(n_units=N_UNITS)
    rng = np.random.default_rng(2)
    n = s.dpo_micro * s.dpo_steps

    def units(mean):
        return rng.integers(0, N_UNITS, size=max(4, int(rng.normal(mean, mean / 4))))

    pairs = encode_pairs([SimpleNamespace(id=f"p{i}", prompt=units(s.prompt_len), chosen=units(s.completion_len),
                                          rejected=units(s.completion_len)) for i in range(n)], info)
    policy = build(s)
    prepare_packed_attention(policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    metrics = Metrics()
    loss_fn = make_loss_fn(reference, 0.1, metrics)
    optimizer = build_optimizer(policy, Optim(lr=5e-5))
    env = dist.Env(device=s.device)
    budget = Budget("steps", float(s.dpo_steps))
    times, tokens = [], []
    for step in range(s.dpo_steps):
        batch = to_device(collate(pairs, np.arange(step * s.dpo_micro, (step + 1) * s.dpo_micro)), s.device)
        sync(s.device)
        t0 = time.perf_counter()
        train_step(policy, optimizer, [batch], loss_fn, env,
                   lambda: torch.autocast(s.device.type, dtype=torch.bfloat16), 0.5, budget)
        sync(s.device)
        times.append(time.perf_counter() - t0)
        tokens.append(batch["n_tokens"])
        last = metrics.reduce(s.device)
    timed = slice(1, None)  # the first step allocates the optimiser state
    sec = sum(times[timed])
    return {"pairs_s": s.dpo_micro * len(times[timed]) / sec, "tok_s": sum(tokens[timed]) / sec,
            "tokens_per_pair": float(np.mean(tokens)) / s.dpo_micro, "loss": last["loss"]}


def generation_run(s: Setup) -> dict:
    """slam.generate.sample_units with the recipe's sampling on the same shape (KV cache, SDPA)."""
    info = SlamInfo(n_units=N_UNITS)
    model = build(s, attn="sdpa").eval()
    if s.device.type == "cuda":
        model = model.to(torch.bfloat16)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, N_UNITS, size=s.prompt_len // 4 * 3) for _ in range(s.gen_prompts)]
    sample_units(model, info, prompts[:2], max_new_tokens=2, batch_size=2)  # warm-up: kernels, allocator
    sync(s.device)
    t0 = time.perf_counter()
    out = sample_units(model, info, prompts, max_new_tokens=s.gen_tokens, temperature=0.8, top_k=25,
                       batch_size=s.gen_prompts)
    sync(s.device)
    dt = time.perf_counter() - t0
    assert all(len(o[0]) == s.gen_tokens for o in out)
    return {"units_s": s.gen_prompts * s.gen_tokens / dt, "seconds": dt, "prompts": s.gen_prompts}


# --- 5. FSDP2 -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fsdp_check(s: Setup, steps: int = 3) -> dict:
    """FSDP2 on one process (every block fully_shard-ed, then the root, as slam.train.dist.wrap shards under
    torchrun) against the unsharded model that DDP runs on each rank, through slam's train_step."""
    import torch.distributed as tdist
    from torch.distributed.fsdp import fully_shard

    own_group = not tdist.is_initialized()
    if own_group:
        tdist.init_process_group("nccl" if s.device.type == "cuda" else "gloo",
                                 init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        rng = np.random.default_rng(4)
        batches = [{k: v.to(s.device) if torch.is_tensor(v) else v for k, v in packed_batch(rng, s, s.micro).items()}
                   for _ in range(steps)]
        env = dist.Env(device=s.device)
        losses = {}
        for name in ("unsharded", "fsdp2"):
            model = build(s)
            prepare_packed_attention(model)
            if name == "fsdp2":
                # dist.wrap leaves a one-process model bare; shard it the same way by hand to run FSDP2 here
                for block in dist.transformer_blocks(model):
                    fully_shard(block)
                fully_shard(model)
                from torch.distributed.tensor import DTensor

                params = list(model.parameters())
                sharded = (sum(isinstance(p, DTensor) for p in params), len(params))
            optimizer = build_optimizer(model, Optim(lr=1e-3))
            budget = Budget("steps", float(steps))
            losses[name] = [train_step(model, optimizer, [b], causal_lm_loss, env,
                                       lambda: torch.autocast(s.device.type, dtype=torch.bfloat16), 0.5,
                                       budget).loss for b in batches]
            del model, optimizer
        rel = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp2"], losses["unsharded"]))
        return {"losses": losses, "rel": rel, "sharded": sharded}
    finally:
        if own_group:
            tdist.destroy_process_group()


def multi_gpu_check(s: Setup, data: Path, work: Path) -> dict:
    """With more than one GPU: `slam train` under torchrun on all of them, dist.strategy ddp vs fsdp."""
    n = torch.cuda.device_count() if s.device.type == "cuda" else 0
    if n < 2:
        return {"skip": f"not run: {max(n, 1)} {'GPU' if n else 'device'} (needs 2 or more)"}
    losses = {}
    for strategy in ("ddp", "fsdp"):
        out = work / f"torchrun-{strategy}"
        args = ["tiny-cpu", f"data.train=[{{path: {data}}}]", f"out={out}", f"data.context={s.context}",
                "data.val_fraction=0.01", f"model.config={json.dumps(s.config)}", f"batch.size={s.micro * n}",
                f"batch.micro={s.micro}", "budget.time=null", "budget.steps=3", "schedule.warmup_min_steps=1",
                "precision=bf16", "log_every=1", "eval.every_steps=0", "eval.batches=1",
                "checkpoint.every_steps=0", "checkpoint.every_minutes=0", f"dist.strategy={strategy}"]
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               str(n), "-m", "slam.cli", "train", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
        if proc.returncode != 0:
            return {"error": f"{strategy} failed: {proc.stderr.strip().splitlines()[-1:]}"}
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        losses[strategy] = [r["loss"] for r in rows if r["kind"] == "train"]
        shutil.rmtree(out, ignore_errors=True)
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses["fsdp"], losses["ddp"]))
    return {"losses": losses, "rel": rel, "gpus": n}


# --- the table ------------------------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**FAIL**")


def gib(x: float) -> str:
    return f"{x / GiB:.2f} GiB"


def error_text(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300].replace("|", "/")
    return f"ERROR {type(e).__name__}: {first}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry", action="store_true", help="tiny shape on the CPU: the same code, in seconds")
    ap.add_argument("--repeats", type=int, default=None,
                    help="alternating slam / HF Trainer rounds (default 2; 1 with --dry, to stay under a minute)")
    ap.add_argument("--compile-backend", default=None,
                    help="torch.compile backend of the compile-on runs (default inductor; aot_eager with --dry)")
    ap.add_argument("--out", type=Path, default=Path("gpu-check.md"), help="markdown table written here")
    args = ap.parse_args()
    if not args.dry and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device; run with --dry for the CPU miniature")
    s = setup(args.dry)
    args.repeats = args.repeats or (1 if args.dry else 2)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.dry else "inductor")
    if args.dry:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        torch.set_flush_denormal(True)
    t_start = time.perf_counter()
    env = environment(s.device)
    sh = s.shape
    rows: list[tuple[str, str, str, str]] = []
    cuda = s.device.type == "cuda"
    bf16_tol = "max abs diff <= 2x the bf16 per-document SDPA's + 1e-3 (vs fp32 reference)"

    def step(name):
        print(f"[{time.perf_counter() - t_start:6.1f} s] {name}", flush=True)

    @contextmanager
    def section(label: str):
        """A section that raises becomes one failed row; the check goes on (one command, every answer)."""
        step(label)
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported in the table, with the traceback on stderr
            import traceback

            traceback.print_exc()
            rows.append((label, error_text(e), "runs", verdict(False)))

    with section("varlen attention kernel"):
        k = kernel_check(s)
        fwd_ok = k["fwd"] <= 2 * k["fwd_ref16"] + 1e-3
        bwd_ok = k["bwd"] <= 2 * k["bwd_ref16"] + 1e-3
        label = k["name"] + ("" if cuda else " (CPU: no varlen kernel, the per-document reference runs)")
        rows.append(("varlen attention forward, bf16", f"{label}: max abs diff {k['fwd']:.2e} (bf16 reference "
                     f"{k['fwd_ref16']:.2e}); {k['tokens']:,} tokens, {k['documents']} documents, "
                     f"{sh.heads}/{sh.kv_heads} heads of {sh.head_dim}", bf16_tol, verdict(fwd_ok)))
        rows.append(("varlen attention backward (dq, dk, dv)", f"max abs diff {k['bwd']:.2e} (bf16 reference "
                     f"{k['bwd_ref16']:.2e}); fwd+bwd {k['seconds'] * 1e3:.1f} ms (first call)", bf16_tol, verdict(bwd_ok)))
        leak_ok = k["leak"] == 0.0 and k["own_change"] > 0
        rows.append(("cross-document leak", f"other documents moved by {k['leak']:.1e} when one document's K/V "
                     f"changed (its own output moved {k['own_change']:.2f})", "0 exactly", verdict(leak_ok)))
    with section("kernel reached by the bf16-autocast training forward"):
        tk = training_forward_kernel(s)
        used = ", ".join(f"{n} (q {d})" for n, d in tk["choices"])
        kernel_ok = all(n in ("torch.varlen_attn", "flash_attn") for n, _ in tk["choices"]) if cuda else None
        rows.append(("kernel reached by the bf16-autocast training forward", f"{used}, {tk['calls']} calls",
                     "the varlen kernel on a GPU", verdict(kernel_ok)))

    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        from bench.train import make_data  # ~280k tokens of utterance-like documents (20-600 units)

        make_data(work / "units")
        with section("training throughput"):
            training_rows(s, args, env, work, rows, step)
        with section("slam train, largest micro that fits"):
            if not cuda:
                rows.append(("slam train, largest micro that fits", "not run: --dry (CPU)", "—", verdict(None)))
            else:
                total = torch.cuda.get_device_properties(s.device).total_memory
                big = largest_micro(sh, s.context, total, divides=s.micro * 16)  # a divisor of the recipe's 128
                if not big or big <= s.micro:
                    rows.append(("slam train, largest micro that fits", f"{big}: not above micro {s.micro}",
                                 "—", verdict(None)))
                else:
                    step(f"train eager at the largest micro predicted to fit ({big})")
                    p = predict_memory(sh, big, s.context, "bf16", "varlen")
                    try:
                        r = slam_run(s, work / "units", work / "slam-big", False, big)
                        rows.append((f"slam train, largest micro that fits: {big}", f"{r['tok_s']:,.0f} tokens/s"
                                     + (f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] else "")
                                     + f", peak {gib(r['peak_bytes'])} (predicted {gib(p.total)})",
                                     "runs; peak within 15%", verdict(abs(r["peak_bytes"] / p.total - 1) <= 0.15)))
                    except torch.cuda.OutOfMemoryError:
                        rows.append((f"slam train, largest micro that fits: {big}", f"out of memory (predicted "
                                     f"{gib(p.total)} of {gib(total)})", "runs", verdict(False)))
        with section("DPO step"):
            d = dpo_run(s)
            rows.append((f"DPO step (policy + frozen reference, {s.dpo_micro} pairs per forward)",
                         f"{d['pairs_s']:,.1f} pairs/s = {d['tok_s']:,.0f} tokens/s (~{d['tokens_per_pair']:.0f} "
                         f"tokens per pair); loss {d['loss']:.4f}", "—", verdict(None)))
        with section("generation (slam.generate.sample_units)"):
            gres = generation_run(s)
            rows.append((f"generation ({gres['prompts']} prompts x {s.gen_tokens} units, temperature 0.8, top-k 25)",
                         f"{gres['units_s']:,.0f} units/s ({gres['seconds']:.1f} s)", "—", verdict(None)))
        with section("FSDP2 (1 process, every block sharded)"):
            f = fsdp_check(s)
            tol = 2e-3 if cuda else 1e-5  # bf16 autocast on a GPU reorders reductions; the CPU path is exact-ish
            rows.append(("FSDP2 (1 process, every block sharded) vs unsharded (DDP's per-rank step)",
                         f"losses {', '.join(f'{x:.5f}' for x in f['losses']['fsdp2'])} vs "
                         f"{', '.join(f'{x:.5f}' for x in f['losses']['unsharded'])}; max relative diff "
                         f"{f['rel']:.1e}; {f['sharded'][0]} of {f['sharded'][1]} parameters are DTensors",
                         f"<= {tol:g}", verdict(f["rel"] <= tol and f["sharded"][0] == f["sharded"][1])))
        with section("torchrun on all GPUs, ddp vs fsdp"):
            m = multi_gpu_check(s, work / "units", work)
            if "skip" in m:
                rows.append(("torchrun on all GPUs, ddp vs fsdp", m["skip"], "—", verdict(None)))
            elif "error" in m:
                rows.append(("torchrun on all GPUs, ddp vs fsdp", m["error"], "same losses", verdict(False)))
            else:
                rows.append((f"torchrun on {m['gpus']} GPUs, ddp vs fsdp", f"max relative loss diff {m['rel']:.1e}",
                             "<= 2e-3", verdict(m["rel"] <= 2e-3)))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = time.perf_counter() - t_start
    head = ["# bench/gpu.py" + (" --dry (CPU miniature: the code paths, not GPU figures)" if args.dry else ""), "",
            f"Model: {'the Slam shape' if not args.dry else 'a tiny Qwen2'} ({sh.params:,} parameters; hidden "
            f"{sh.hidden}, {sh.layers} layers, {sh.heads}/{sh.kv_heads} heads of {sh.head_dim}, MLP "
            f"{sh.intermediate}, vocabulary {sh.vocab}), random init; context {s.context}; bf16 autocast.", "",
            " | ".join(f"{k}: {v}" for k, v in env.items()), "",
            "| check | result | target | verdict |", "| --- | --- | --- | --- |"]
    lines = head + [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", f"Whole check: {total:.0f} s. Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    print(f"wrote {args.out}")


def training_rows(s: Setup, args: Any, env: dict, work: Path, rows: list, step: Callable) -> None:
    """slam eager / HF Trainer / slam compiled, alternating `args.repeats` times, then their rows. A run
    that raises is reported in its row and does not stop the others."""
    cuda = s.device.type == "cuda"
    sh = s.shape
    docs = documents(work / "units", s.context)
    runs: dict[str, list[dict]] = {"eager": [], "compile": [], "hf": []}
    order = [r for _ in range(args.repeats) for r in ("eager", "hf", "compile")]  # alternating
    for i, name in enumerate(order):
        step(f"train {name} ({i + 1}/{len(order)})")
        try:
            if name == "hf":
                res = hf_run(s, docs, work / f"hf-{i}")
            else:
                with compile_backend(args.compile_backend if name == "compile" else "inductor"):
                    res = slam_run(s, work / "units", work / f"slam-{i}", name == "compile", s.micro)
        except Exception as e:  # noqa: BLE001 - into the table
            import traceback

            traceback.print_exc()
            res = {"error": error_text(e)}
        runs[name].append(res)
    pred = predict_memory(sh, s.micro, s.context, "bf16", "varlen" if cuda else "sdpa")
    good = {n: [r for r in rs if "error" not in r and "skip" not in r] for n, rs in runs.items()}
    for name in ("eager", "compile"):
        backend = f" ({args.compile_backend})" if name == "compile" else ""
        label = (f"slam train, compile {'on' if name == 'compile' else 'off'}{backend}, micro {s.micro} x "
                 f"{s.context}, accumulation {s.accum}")
        rs = good[name]
        if not rs:
            rows.append((label, runs[name][0]["error"], "runs", verdict(False)))
            rows.append((f"  memory, compile {'on' if name == 'compile' else 'off'}", "no run", "—", verdict(False)))
            continue
        tok = statistics.median(r["tok_s"] for r in rs)
        mfu = [r["mfu"] for r in rs if r["mfu"] is not None]
        peak = max(r["peak_bytes"] for r in rs)
        mfu_text = f"MFU {100 * statistics.median(mfu):.1f}%" if mfu else "MFU n/a"
        extra = (f"; compile warm-up {statistics.median(r['compile_s'] for r in rs):.1f} s outside the budget, "
                 f"{rs[0]['graphs']} graphs compiled" if name == "compile" else "")
        mfu_target = any(g in env["GPU"] for g in ("H100", "A100", "H200"))
        rows.append((label, f"{tok:,.0f} tokens/s ({', '.join(format(r['tok_s'], ',.0f') for r in rs)}), "
                     f"{mfu_text}, {rs[0]['attn']} attention{extra}", "MFU >= 40% on H100 / A100" if cuda else "—",
                     verdict(statistics.median(mfu) >= 0.40 if mfu and mfu_target else None)))
        measured = "peak allocated" if cuda else "peak RSS of the process (not comparable: libraries dominate)"
        ok = abs(peak / pred.total - 1) <= 0.15 if cuda else None
        rows.append((f"  memory, compile {'on' if name == 'compile' else 'off'}",
                     f"{measured} {gib(peak)}; slam.train.memory predicts {gib(pred.total)}",
                     "within 15% of the prediction" if cuda else "—", verdict(ok)))
    hf = runs["hf"]
    slam_best = max((statistics.median(r["tok_s"] for r in good[n]) for n in ("eager", "compile") if good[n]),
                    default=None)
    if "skip" in hf[0]:
        # on a GPU a missing baseline fails the check (nothing to compare); --dry only proves the code runs
        rows.append(("HF Trainer + DataCollatorWithFlattening", hf[0]["skip"], "slam >= 1.5x",
                     verdict(False if cuda else None)))
    elif not good["hf"]:
        rows.append(("HF Trainer + DataCollatorWithFlattening", hf[0]["error"], "slam >= 1.5x", verdict(False)))
    else:
        hg = good["hf"]
        htok = statistics.median(r["tok_s"] for r in hg)
        hmfu = [r["mfu"] for r in hg if r["mfu"] is not None]
        ratio = f"; slam's best / HF = {slam_best / htok:.2f}x" if slam_best else ""
        rows.append((f"HF Trainer + DataCollatorWithFlattening ({hg[0]['impl']}"
                     f"{'' if hg[0]['impl'] == 'flash_attention_2' else ': flash-attn not installed'}, bf16, "
                     f"{hg[0]['examples']} documents per micro-batch)",
                     f"{htok:,.0f} tokens/s ({', '.join(format(r['tok_s'], ',.0f') for r in hg)})"
                     + (f", MFU {100 * statistics.median(hmfu):.1f}%" if hmfu else "")
                     + f", peak {gib(max(r['peak_bytes'] for r in hg))}{ratio}",
                     "slam >= 1.5x", verdict((slam_best or 0) / htok >= 1.5 if cuda else None)))
    if good["compile"] and good["eager"]:
        c_loss, e_loss = good["compile"][0]["losses"], good["eager"][0]["losses"]
        c_rel = max(abs(a - b) / abs(b) for a, b in zip(c_loss, e_loss))
        rows.append(("compile vs eager, same run's losses", f"max relative difference {c_rel:.1e} over "
                     f"{len(c_loss)} steps", "<= 2e-2 in bf16", verdict(c_rel <= 2e-2)))
    else:
        rows.append(("compile vs eager, same run's losses", "a run failed (above)", "<= 2e-2 in bf16", verdict(False)))


if __name__ == "__main__":
    main()
