"""The demo's plan: sizes, budgets, precision and threads of one `slam demo` run (stored in OUT/demo.json).

Budgets are counted in optimiser steps, not minutes, so that a fixed seed gives the same numbers on every
machine of the same kind, loaded or not (a busy machine is only slower). The step counts fit the whole demo
in ~30 minutes of a quiet 2-core x86_64 CPU (AMD EPYC, AVX512-BF16; 31m46s measured, 2026-12): scratch and
TWIST ~16 minutes each, side by side on one core each (~4,400 tokens/s in bf16 = 2,200 steps of 4 x 512; at
2,700 steps the demo took 34m48s); the text LM gets 600 steps of 32 x 128 (2.5M tokens, ~6 minutes on one
core), beside the data steps and before TWIST, while scratch trains on the other core; DPO 150 steps of 16
pairs (~4.5 minutes with the reference forward and the held-out pairs). `--minutes M` keeps the paper's
wall-clock budget (the Slamming setting) instead: each speech LM gets M minutes, the text LM M/4, DPO M/6;
its numbers then depend on the load of the machine.

Threads: every run has one (OMP_NUM_THREADS=1), fixed rather than read from the machine (the split of a
reduction between threads can change the last bits of a sum, so a run on 8 cores must use the same threads as
one on 2 to give the same digits), and one because two-thread runs collapse when other jobs share the cores:
the text LM with 2 threads made 700 tokens/s at a load average of ~7 on a 2-core CPU, against ~11,600 on the
quiet machine (threads wait for each other at every barrier). The two cores are used by two lanes of single-
threaded runs side by side: the text LM then the TWIST speech LM on one, the speech LM from scratch on the other.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

MODELS = ("scratch", "twist", "twist-dpo")
BENCHMARKS = ("grammar", "story", "topic")
MODEL_TITLES = {"scratch": "speech LM from scratch", "twist": "TWIST (text LM init)", "twist-dpo": "TWIST + DPO"}
BENCH_TITLES = {"grammar": "grammar (sBLIMP-like)", "story": "story cloze (sSC-like)",
                "topic": "topic cloze (tSC-like)"}
CHANCE = 50.0  # two-way choice: a model that cannot tell the endings apart scores 50%
STEPS = ("corpus", "speech", "units", "prefs", "pretrain", "dpo", "eval", "generate", "report")
# Plan fields that decide the data steps (corpus .. prefs): a folder made with others is never mixed with them.
# The rest (budgets, seeds, recipe overrides) only decide the training: changing them retrains on the same data.
DATA_FIELDS = {"stories", "text_stories", "topics", "pairs", "prefs", "units", "kmeans_frames", "kmeans_files",
               "prompts", "seed"}
THREADS = 1  # every training run, DPO, evaluation and generation (see the module docstring)


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one demo run (stored in demo.json: a folder is only resumed with the same plan)."""

    stories: int
    """Spoken training stories: the first `stories` lines of the corpus's stories.txt (~6 s of speech each)."""
    text_stories: int
    """Stories the text LM reads (`slam corpus --stories`; the spoken ones are its first `stories`). Text is
    cheap: a story is ~25 word tokens as text and ~115 units as speech, and needs no synthesis."""
    pairs: int
    """Held-out pairs per benchmark (grammar, story, topic): 1,000 pairs give a 95% CI of about +-3 points
    (600: +-4, too wide to tell a 55% topic score from chance)."""
    prefs: int
    """Preference triples for DPO (a share `dpo_val_fraction` of them, chosen by id hash, is held out)."""
    units: int
    """k of the k-means on 25 Hz log-mel frames (200: docs/demo.md)."""
    kmeans_frames: int
    """Frames sampled to fit the k-means."""
    kmeans_files: int
    """Training utterances the k-means frames are drawn from."""
    speech_steps: int
    """Optimiser steps of each speech LM (scratch and TWIST get the same); `budget.steps`."""
    text_steps: int
    """Optimiser steps of the text LM that initialises the TWIST model."""
    dpo_steps: int
    """DPO optimiser steps."""
    minutes: float | None = None
    """`--minutes M`: wall-clock budgets instead of steps (speech M, text M/4, DPO M/6; load-dependent)."""
    dpo_val_fraction: float = 0.2
    """Preference pairs held out from DPO: its reward accuracy on them is the report's held-out number."""
    prompts: int = 2
    """Held-out spoken prompts continued by each model."""
    topics: int | None = None
    """`slam corpus --topics`: the first N of its 8 topics (None = all)."""
    precision: str = "fp32"
    """`precision` of the three training runs and DPO: bf16 where the CPU has native bf16 dot products."""
    seed: int = 0
    """Seed of the data (corpus, k-means) and of the first training seed."""
    seeds: int = 1
    """Training seeds (seed, seed+1, ...): text LM, both speech LMs and DPO are trained once per seed on the
    same data; the report gives mean and spread over them."""
    text_overrides: tuple[str, ...] = ()
    """Extra `key=value` overrides of the demo-text recipe (--fast: a tiny model)."""
    speech_overrides: tuple[str, ...] = ()
    """Extra overrides of the demo-speech recipe (the TWIST model's sizes come from the text LM itself)."""
    dpo_overrides: tuple[str, ...] = ()

    def budget(self, run: str) -> list[str]:
        """The `budget.*` overrides of one run: `text`, `speech` or `dpo`."""
        if self.minutes is not None:
            share = {"text": 0.25, "speech": 1.0, "dpo": 1 / 6}[run]
            return [f"budget.time={60 * self.minutes * share:g}s", "budget.steps=null"]
        steps = {"text": self.text_steps, "speech": self.speech_steps, "dpo": self.dpo_steps}[run]
        return [f"budget.steps={steps}", "budget.time=null"]

    def training_seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]


def cpu_bf16() -> bool:
    """Native bf16 dot products on this CPU (AVX512-BF16 or AMX; Linux flags). There, bf16 autocast trains the
    demo's 1.2M model 1.25x faster than fp32 on one thread (6,082 vs 4,863 tokens/s, 8 x 512; 1.48x at hidden
    256; bench/cpu_step.py), weights and AdamW state staying fp32. Elsewhere fp32 is kept: without native
    bf16, oneDNN emulates it, which was not measured to pay."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def make_plan(fast: bool = False, seed: int = 0, minutes: float | None = None, seeds: int = 1) -> Plan:
    if fast:
        # seconds of everything: checks that every stage runs and every artefact is written, not quality.
        # fp32 on every CPU: the test pins the fast demo's numbers, which must not depend on the bf16 flag
        tiny = ("model.config.hidden_size=32", "model.config.intermediate_size=64",
                "model.config.num_hidden_layers=2", "model.config.num_attention_heads=2",
                "model.config.num_key_value_heads=1", "batch.size=4", "batch.micro=4", "eval.every_steps=10",
                "eval.batches=2", "log_every=2", "schedule.warmup_min_steps=2",
                # 40 stories: the default 2% hold-out (chosen by document hash) can hold none out
                "data.val_fraction=0.2")
        return Plan(stories=40, text_stories=160, pairs=12, prefs=16, units=16, kmeans_frames=5000,
                    kmeans_files=40, topics=4, precision="fp32", speech_steps=30, text_steps=20, dpo_steps=6,
                    minutes=None if minutes is None else minutes / 60,  # --fast --minutes M: M seconds
                    seed=seed, seeds=seeds, dpo_val_fraction=0.25, text_overrides=tiny,
                    speech_overrides=tiny + ("data.context=128",),
                    dpo_overrides=("batch.size=4", "batch.micro=2", "eval.batches=2", "log_every=2"))
    # 4 of the corpus's 8 topics: at equal text and tokens, 8 topics left topic cloze at
    # chance (51.5%) and 4 topics reached 56.3% [52.3, 60.3] (docs/demo.md, attempts 4 and 5).
    # 64,000 stories of text for the text LM (8x the 8,000 spoken): 600 steps of 32 x 128 tokens read each
    # ~1.6 times; the generator's supply of distinct stories thins out beyond (53,341 of 64,000 distinct).
    # 4,000 preference triples: ~3,100 train pairs after the auto-BLEU filter and the fifth held out, so DPO's
    # 150 x 16 = 2,400 pairs see none twice, as the paper's one pass over SpokenSwag; with 2,000 (1,536 train
    # pairs, 1.6 passes) DPO fitted its second pass (train reward accuracy 0.5-0.6 in the first, 0.9 in the
    # second) and generalised less (docs/demo.md)
    return Plan(stories=8000, text_stories=64000, pairs=1000, prefs=4000, units=200, kmeans_frames=100_000,
                kmeans_files=1000, speech_steps=2200, text_steps=600, dpo_steps=150, minutes=minutes, seed=seed,
                seeds=seeds, topics=4, precision="bf16" if cpu_bf16() else "fp32")


def jsonable(x):
    return json.loads(json.dumps(x))


def plan_diff(old: dict, new: dict) -> str:
    new = jsonable(new)
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:4])


def machine() -> dict:
    """The CPU, its bf16 support, torch and Python: the 'kind' of machine whose digits a run reproduces."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(), "bf16": cpu_bf16(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "load_at_start": load}
