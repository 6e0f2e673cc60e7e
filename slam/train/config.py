"""The typed training recipe: every key a YAML recipe or a `key=value` override may set, with its meaning.

Loading is strict (slam.config): an unknown key, a wrong type, or a value rejected here ends the run with
one line naming the dotted field and exit code 2. Checks that need the model or the data (context longer
than the model's positions, a missing dataset folder) run in `slam.train.pretrain` before any step, with the
same kind of error. Defaults are the paper's final recipe (recipes/slam.yaml restates them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from slam.config import check, load_recipe
from slam.errors import ConfigError, SlamError
from slam.data.interleave import InterleaveConfig
from slam.utils import parse_duration


@dataclass
class Model:
    base: str | None = "Qwen/Qwen2.5-0.5B"
    """TWIST init: hub id or local folder of a causal text LM whose body is kept; null = random init."""
    unit_init: Literal["truncate", "fresh"] = "truncate"
    """How the unit rows of the new embedding table start: the first rows of the text table (TWIST,
    slamkit) or a fresh random init."""
    rope_theta: float | None = 10000.0
    """Override RoPE theta (the paper: 10,000 with context 1024 beats Qwen's 1e6); null keeps the base's."""
    config: dict[str, Any] = field(default_factory=dict)
    """Random init only: HF config fields of the model (model_type, hidden_size, num_hidden_layers, ...)."""

    def __post_init__(self) -> None:
        check(self.rope_theta is None or self.rope_theta > 0, "model.rope_theta", "must be positive")
        check(self.base is not None or bool(self.config), "model.config",
              "random init (model.base: null) needs a model.config with the model's sizes")


@dataclass
class Source:
    path: str
    """A units dataset folder (data.kind=units) or a UTF-8 text file / folder of .txt (data.kind=text)."""
    weight: float | None = None
    """Mixing weight: this source gives weight / sum of weights of the training tokens (small sets are
    upsampled). Null on every source = natural proportions, each document once per epoch (as slamkit)."""
    stream: Literal["speech", "text", "interleaved"] | None = None
    """data.kind=interleaved: what this source feeds: speech-only utterances, text-only lines, or
    interleaved text/speech spans of utterances with word times; null = interleaved for a units dataset,
    text for a text file."""

    def __post_init__(self) -> None:
        check(self.weight is None or self.weight > 0, "weight", f"must be positive, got {self.weight}")


@dataclass
class Data:
    train: list[Source] = field(default_factory=list)
    """Training sources, e.g. [{path: units/librispeech, weight: 1}, {path: units/stinystories, weight: 1}]."""
    val: str | None = None
    """Separate validation source; null = hold out `val_fraction` of the documents of the training sources."""
    val_fraction: float = 0.005
    """Share of documents held out for validation when `val` is null (chosen by a seeded hash of the id)."""
    kind: Literal["units", "text", "interleaved"] = "units"
    """units = speech units datasets; text = plain text LM pre-training (the demo's text warm-up);
    interleaved = speech-only, text-only and interleaved streams mixed (slam.data.interleave)."""
    text_tokenizer: str | None = None
    """data.kind=text: folder of the HF tokenizer that turns the text into ids; data.kind=interleaved: the
    text tokenizer (null = model.base's own)."""
    interleave: InterleaveConfig = field(default_factory=InterleaveConfig)
    """data.kind=interleaved: how utterances are cut into text and speech spans."""
    context: int = 1024
    """Tokens per packed row (the paper: 1024). Long documents are cut into chunks of this length."""
    min_length: int = 0
    """Leave out documents shorter than this many tokens (<s> and </s> included), e.g. 1-second
    fragments; 0 keeps all. Applied to training and held-out documents alike."""
    max_length: int | None = None
    """Leave out (not cut) documents longer than this many tokens; null keeps all (longer than
    `context` they are cut into chunks)."""

    def __post_init__(self) -> None:
        check(self.context >= 2, "data.context", f"must be at least 2, got {self.context}")
        check(self.min_length >= 0, "data.min_length", f"must be >= 0, got {self.min_length}")
        check(self.max_length is None or self.max_length >= max(self.min_length, 1), "data.max_length",
              f"must be >= data.min_length and positive, got {self.max_length}")
        check(0 <= self.val_fraction < 1, "data.val_fraction", f"must lie in [0, 1), got {self.val_fraction}")
        check(self.kind != "text" or bool(self.text_tokenizer), "data.text_tokenizer",
              "data.kind=text needs a text tokenizer folder")
        check(self.kind == "interleaved" or all(s.stream is None for s in self.train), "data.train",
              "`stream` is for data.kind=interleaved only")


@dataclass
class Batch:
    size: int = 128
    """Sequences per optimiser step over all devices (the paper: 128 x 1024 tokens)."""
    micro: int = 8
    """Sequences per device per forward pass; accumulation = size / (micro x devices)."""

    def __post_init__(self) -> None:
        check(self.size > 0, "batch.size", f"must be positive, got {self.size}")
        check(self.micro > 0, "batch.micro", f"must be positive, got {self.micro}")
        check(self.size % self.micro == 0, "batch.micro",
              f"{self.micro} does not divide batch.size {self.size}")


@dataclass
class Optim:
    name: Literal["adamw", "ademamix", "muon"] = "adamw"
    """adamw (the paper); ademamix (the paper's runner-up); muon (torch.optim.Muon on hidden matrices,
    AdamW on embeddings, head, norms and biases)."""
    lr: float = 1e-3
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam betas (HF Trainer defaults, as slamkit used); AdEMAMix adds `beta3`."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay on matrices (never on norms, biases); slamkit used the HF default 0."""
    grad_clip: float = 0.5
    """Clip the global gradient norm to this (0 = off)."""
    fused: bool = True
    """Fused AdamW kernel where the device supports it (CUDA, and CPU in torch >= 2.4)."""
    beta3: float = 0.9999
    """AdEMAMix: decay of the slow EMA."""
    alpha: float = 5.0
    """AdEMAMix: weight of the slow EMA."""
    ademamix_warmup: float = 1.0
    """AdEMAMix: share of the budget over which alpha and beta3 ramp up (1.0 = whole run, as the paper)."""
    muon_momentum: float = 0.95
    """Muon: momentum."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "optim.lr", f"must be positive, got {self.lr}")
        check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
              f"must be two numbers in [0, 1), got {self.betas}")
        check(self.eps > 0, "optim.eps", "must be positive")
        check(0 <= self.beta3 < 1, "optim.beta3", "must lie in [0, 1)")
        check(0 < self.ademamix_warmup <= 1, "optim.ademamix_warmup", "must lie in (0, 1]")


@dataclass
class Schedule:
    name: Literal["cosine", "inverse_sqrt", "wsd", "constant"] = "cosine"
    """LR shape over budget progress p in [0, 1]: cosine (the paper), inverse_sqrt (TWIST), wsd
    (warmup-stable-decay), constant (after warmup)."""
    warmup: float = 0.01
    """Warmup as a share of the budget (the paper: 1%)."""
    warmup_min_steps: int = 100
    """...but at least this many optimiser steps (slamkit: max(100 steps, 1%))."""
    min_lr: float = 5e-5
    """LR at the end of the budget (cosine, wsd) and the floor of inverse_sqrt."""
    cooldown: float = 0.2
    """wsd: share of the budget spent decaying to min_lr at the end."""

    def __post_init__(self) -> None:
        check(0 <= self.warmup < 1, "schedule.warmup", f"must lie in [0, 1), got {self.warmup}")
        check(self.warmup_min_steps >= 0, "schedule.warmup_min_steps", "must be >= 0")
        check(self.min_lr >= 0, "schedule.min_lr", f"must be >= 0, got {self.min_lr}")
        check(0 < self.cooldown <= 1, "schedule.cooldown", f"must lie in (0, 1], got {self.cooldown}")
        check(self.warmup + (self.cooldown if self.name == "wsd" else 0) <= 1, "schedule.cooldown",
              "warmup + cooldown exceed the budget")


@dataclass
class BudgetConfig:
    ONE_OF: ClassVar[tuple[str, ...]] = ("time", "tokens", "steps")  # a layer setting one clears the others

    time: str | None = "24h"
    """Wall-clock training time ("24h", "90m"); counted around training steps only (eval, checkpoints and
    compile warm-up are excluded and reported separately)."""
    tokens: int | None = None
    """Training tokens (all devices)."""
    steps: int | None = None
    """Optimiser steps."""

    def __post_init__(self) -> None:
        set_ = [k for k in ("time", "tokens", "steps") if getattr(self, k) is not None]
        check(len(set_) == 1, "budget", "set exactly one of budget.time, budget.tokens, budget.steps "
              f"(got {', '.join(set_) or 'none'}; set the others to null)")
        if self.time is not None:
            try:
                seconds = parse_duration(self.time)
            except SlamError as e:
                raise ConfigError(f"budget.time: {e}") from None
            check(seconds > 0, "budget.time", "must be positive")
        check(self.tokens is None or self.tokens > 0, "budget.tokens", "must be positive")
        check(self.steps is None or self.steps > 0, "budget.steps", "must be positive")

    @property
    def seconds(self) -> float | None:
        return None if self.time is None else parse_duration(self.time)


@dataclass
class Eval:
    every_steps: int = 1000
    """Validation loss every this many optimiser steps (and always at the end); 0 = only at the end."""
    batches: int = 50
    """Micro-batches of validation rows per evaluation (0 = the whole validation split)."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "eval.every_steps", "must be >= 0")
        check(self.batches >= 0, "eval.batches", "must be >= 0")


@dataclass
class Checkpoint:
    every_steps: int = 1000
    """Save a checkpoint every this many optimiser steps (0 = off)."""
    every_minutes: float = 60.0
    """...and whenever this much training time passed since the last one (0 = off): a killed 24 h run
    loses at most this much."""
    keep_last: int = 2
    """Keep only the newest k checkpoints (slamkit: save_total_limit 2)."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "checkpoint.every_steps", "must be >= 0")
        check(self.every_minutes >= 0, "checkpoint.every_minutes", "must be >= 0")
        check(self.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")


@dataclass
class Dist:
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ddp replicates the model; fsdp shards parameters, gradients and optimiser state
    (FSDP2 fully_shard per transformer block) for models that do not fit one device."""


@dataclass
class Wandb:
    project: str | None = None
    """Weights & Biases project: set it to log every metrics line there too (needs `pip install
    'slam[wandb]'`; WANDB_MODE=offline works without network); null = TensorBoard and metrics.jsonl only."""
    entity: str | None = None
    """W&B team or user (null = your default)."""
    name: str | None = None
    """W&B run name (null = the run folder's name)."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""


@dataclass
class RunConfig:
    """What every training stage shares (pre-training and DPO): the run folder, seed, precision, logging and
    the optimiser, schedule, budget, evaluation, checkpoint and distribution sections."""

    out: str = "runs/slam"
    """Run folder: config, provenance, metrics, TensorBoard, checkpoints, final model."""
    resume: bool = False
    """Continue the run in `out` from its newest complete checkpoint (an interrupted write is ignored)."""
    seed: int = 0
    """Seed of the init and the data order (the validation split is by a hash of each document id)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto = bf16 autocast on GPU, fp32 on CPU. Master weights and optimiser state stay fp32."""
    compile: bool = False
    """torch.compile each transformer block (pre-training: static shapes, so it compiles once; DPO: dynamic
    shapes, packed pairs vary in length); the warm-up is not counted in the budget."""
    gradient_checkpointing: bool = False
    """Activation checkpointing (HF `activation_checkpointing_enable`, non-reentrant): keep only each block's
    input and recompute the rest in the backward, ~1/3 more compute for a fraction of the activation memory
    (a larger batch.micro fits); the losses are the same."""
    log_every: int = 10
    """Write a metrics line every this many optimiser steps."""
    max_bad_steps: int = 5
    """Consecutive non-finite losses tolerated (each restores the last checkpoint and skips the batch)."""
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    eval: Eval = field(default_factory=Eval)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    dist: Dist = field(default_factory=Dist)
    wandb: Wandb = field(default_factory=Wandb)

    def __post_init__(self) -> None:
        check(bool(self.out), "out", "must name a run folder")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.schedule.min_lr <= self.optim.lr, "schedule.min_lr",
              f"{self.schedule.min_lr} exceeds the peak optim.lr {self.optim.lr}")
        if self.budget.steps is not None:
            check(self.schedule.warmup_min_steps <= self.budget.steps, "schedule.warmup_min_steps",
                  f"{self.schedule.warmup_min_steps} warmup steps exceed budget.steps {self.budget.steps}")


@dataclass
class TrainConfig(RunConfig):
    """`slam train`: pre-training (speech, text or interleaved) from TWIST or random init."""

    peak_tflops: float | None = None
    """Peak bf16 dense TFLOP/s of one device for MFU; null = from a table of known GPUs."""
    model: Model = field(default_factory=Model)
    data: Data = field(default_factory=Data)
    batch: Batch = field(default_factory=Batch)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.peak_tflops is None or self.peak_tflops > 0, "peak_tflops", "must be positive")
        if self.budget.steps is not None:
            check(self.batch.size * self.data.context * self.budget.steps > 0, "budget.steps", "empty budget")
        if self.budget.tokens is not None:
            steps = self.budget.tokens // (self.batch.size * self.data.context)
            check(steps >= 1, "budget.tokens",
                  f"{self.budget.tokens} tokens is less than one step of {self.batch.size * self.data.context}")
            check(self.schedule.warmup_min_steps <= steps, "schedule.warmup_min_steps",
                  f"{self.schedule.warmup_min_steps} warmup steps exceed the {steps} steps of budget.tokens")



# --- DPO (`slam dpo`) ----------------------------------------------------------------------------------------
@dataclass
class DPOData:
    train: str = "data/prefs/units"
    """Preference pairs: a units dataset whose ids are <pair>-prompt|chosen|rejected (`slam dpo
    --build-prefs` writes one) or a prefs.jsonl of audio / .npy / inline units, paths relative to it."""
    val: str | None = None
    """Separate validation pairs; null = hold out `val_fraction` of the training pairs (by a hash of the id)."""
    val_fraction: float = 0.01
    """Share of pairs held out for validation when `val` is null (0 = no validation)."""
    max_length: int = 1024
    """Longest `<s> prompt completion <s>` kept, in tokens (the model's context); longer pairs are left out
    and counted (SpokenSwag's are ~10 s of speech, ~250 tokens)."""

    def __post_init__(self) -> None:
        check(0 <= self.val_fraction < 1, "data.val_fraction", f"must lie in [0, 1), got {self.val_fraction}")
        check(self.max_length >= 3, "data.max_length", f"must be at least 3, got {self.max_length}")


@dataclass
class DPOBatch:
    size: int = 64
    """Pairs per optimiser step over all devices (the paper: 4 per device x 16 accumulation)."""
    micro: int = 4
    """Pairs per device per forward pass (2 sequences each, packed into one row)."""

    def __post_init__(self) -> None:
        check(self.size > 0, "batch.size", f"must be positive, got {self.size}")
        check(self.micro > 0, "batch.micro", f"must be positive, got {self.micro}")
        check(self.size % self.micro == 0, "batch.micro", f"{self.micro} does not divide batch.size {self.size}")


@dataclass
class DPOLoss:
    beta: float = 0.1
    """Strength of the pull towards the reference (the paper: 0.1); higher = stay closer."""
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """The preference loss (slam/train/losses.py): sigmoid = DPO (the paper), ipo = IPO (target margin
    1 / (2 beta)), hinge = SLiC/RSO hinge max(0, 1 - beta * margin)."""
    precompute_reference: bool = False
    """Compute the reference log-probs of every pair once before training (cached in the run folder) and
    free the reference model: no second model in memory and one forward less per micro-batch."""

    def __post_init__(self) -> None:
        check(self.beta > 0, "dpo.beta", f"must be positive, got {self.beta}")


@dataclass
class DPOConfig(RunConfig):
    """`slam dpo`: the shared run settings (slam.train.config.RunConfig) with DPO's own defaults, plus the
    starting model, the preference data, the loss and the batch of pairs."""

    out: str = "runs/slam-dpo"
    model: str = "runs/slam/final"
    """The starting model (a slam model folder, or a published slamkit folder): the policy starts from it
    and the frozen reference IS it."""
    data: DPOData = field(default_factory=DPOData)
    dpo: DPOLoss = field(default_factory=DPOLoss)
    batch: DPOBatch = field(default_factory=DPOBatch)
    # the paper's DPO: lr 5e-5, inverse-sqrt after 12% warmup, 30 minutes, validation and checkpoints every 200
    optim: Optim = field(default_factory=lambda: Optim(lr=5e-5))
    schedule: Schedule = field(default_factory=lambda: Schedule(name="inverse_sqrt", warmup=0.12,
                                                                warmup_min_steps=0, min_lr=0.0))
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(time="30m"))
    eval: Eval = field(default_factory=lambda: Eval(every_steps=200, batches=0))
    checkpoint: Checkpoint = field(default_factory=lambda: Checkpoint(every_steps=200, every_minutes=10))

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.model), "model", "must name the starting model folder")

def load(recipe: str, overrides: list[str]) -> TrainConfig:
    """A pre-training recipe as `slam train` reads it: a YAML file, a shipped name or a run folder, then
    `key=value` overrides."""
    return load_recipe(TrainConfig, recipe, overrides)


def load_dpo(recipe: str, overrides: list[str]) -> DPOConfig:
    """A DPO recipe as `slam dpo` reads it: a YAML file, a shipped name or a run folder, then overrides."""
    return load_recipe(DPOConfig, recipe, overrides)
