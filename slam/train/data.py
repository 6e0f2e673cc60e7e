"""The recipe's `data` section -> token layout, packed train/validation loaders and the loss.

One builder for every kind of stream. `data.kind` picks the vocabulary (units: pad, <s>, units; text: a text
tokenizer's; interleaved: a text tokenizer's plus units and markers) and each source feeds one stream:

    speech        a units dataset, `<s> units <s>` (`<s> <speech> units <s>` in the interleaved layout)
    text          UTF-8 lines, `<s> tokens <s>` (`<s> <text> tokens <s>` in the interleaved layout)
    interleaved   a units dataset with word times, spans of text and speech (slam.data.interleave)

Every stream is split into training and held-out documents by the same id hash and packed by one
PackedLoader, mixed by the sources' weights. Path and split problems surface here, before any model is
built, as one-line errors naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from slam.attention import use_varlen_attention
from slam.data import PackedLoader, batch_to, causal_lm_loss, text_source, units_layout, units_source
from slam.data.interleave import interleaved_source, subset, text_stream_source
from slam.data.sources import keep_lengths, val_mask
from slam.errors import ConfigError, SlamError
from slam.text import load_text_tokenizer
from slam.tokens import TEXT_TOKENIZER_DIR, SlamInfo, interleaved_layout
from slam.train import dist
from slam.train.config import Source, TrainConfig
from slam.train.flops import doc_pairs
from slam.units.dataset import read_meta


def text_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.txt")) if path.is_dir() else [path]


def stream_of(cfg: TrainConfig, source: Source) -> str:
    """What a source feeds: data.kind units -> speech, text -> text; interleaved: its `stream`, or interleaved
    for a units dataset and text for a text file."""
    kind = cfg.data.kind
    if kind != "interleaved":
        return "speech" if kind == "units" else "text"
    if source.stream is not None:
        return source.stream
    p = Path(source.path)
    return "text" if (p.is_file() or not (p / "meta.json").exists()) else "interleaved"


def _val_stream(cfg: TrainConfig) -> str:
    kind = cfg.data.kind
    if kind != "interleaved":
        return "speech" if kind == "units" else "text"
    return "interleaved" if (Path(cfg.data.val) / "meta.json").exists() else "text"


# --- checks ---------------------------------------------------------------------------------------------------
def check_sources(cfg: TrainConfig) -> None:
    """Every data path exists and fits its stream; an interleaved or text recipe can find a text tokenizer."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train: no training source given (a list of {path, weight})")
    if any(s.weight is not None for s in d.train) and not all(s.weight is not None for s in d.train):
        raise ConfigError("data.train: give every source a weight, or none (natural proportions)")
    if d.kind == "interleaved":
        if cfg.model.base is None and not d.text_tokenizer:
            raise ConfigError("data.text_tokenizer: random init (model.base: null) needs a text tokenizer folder")
        if cfg.model.base is not None and cfg.model.unit_init != "truncate":
            raise ConfigError("model.unit_init: an interleaved model keeps every text row; use truncate")
    entries = [(f"data.train[{i}].path", s.path, stream_of(cfg, s)) for i, s in enumerate(d.train)]
    if d.val is not None:
        entries.append(("data.val", d.val, _val_stream(cfg)))
    if d.kind == "interleaved" and not any(kind != "text" for _, _, kind in entries):
        raise ConfigError("data.train: an interleaved recipe needs at least one units dataset (speech or "
                          "interleaved stream)")
    if d.kind == "text" and not Path(d.text_tokenizer).exists():
        raise ConfigError(f"data.text_tokenizer: {d.text_tokenizer!r} does not exist")
    for field, path, kind in entries:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{field}: {path!r} does not exist")
        if kind in ("speech", "interleaved") and not (p / "meta.json").exists():
            raise ConfigError(f"{field}: {path!r} is not a units dataset (no meta.json; make one with "
                              f"`slam tokenize`)")
        if kind == "text" and not [f for f in text_files(p) if f.is_file()]:
            raise ConfigError(f"{field}: {path!r} holds no .txt file")


def _auto_tokenizer(path: str) -> Any:
    """A text LM's own tokenizer for data.kind=text (AutoTokenizer, as the model folder will be read later)."""
    from transformers import AutoTokenizer  # heavy: only for text pre-training

    return AutoTokenizer.from_pretrained(path)


# --- vocabulary -----------------------------------------------------------------------------------------------
def token_layout(cfg: TrainConfig) -> SlamInfo:
    """The model's vocabulary: units of the datasets (pad, <s>, units), the text tokenizer's, or both."""
    d = cfg.data
    if d.kind == "interleaved":
        return _interleaved_layout(cfg)
    if d.kind == "text":
        if cfg.model.base is not None:
            raise ConfigError("model.base: data.kind=text pre-trains a text LM from random init; set "
                              "model.base: null and give model.config")
        tok = _auto_tokenizer(d.text_tokenizer)
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return SlamInfo(n_units=0, vocab_size=len(tok), pad_id=pad, bos_id=bos, eos_id=tok.eos_token_id,
                        unit_offset=len(tok), text_tokenizer=str(d.text_tokenizer))
    metas = [(s.path, read_meta(s.path)) for s in d.train] + ([(d.val, read_meta(d.val))] if d.val else [])
    first_path, first = metas[0]
    for path, meta in metas[1:]:
        for key in ("tokenizer_hash", "n_units"):
            if meta.get(key) != first.get(key):
                raise ConfigError(f"data: {path} has {key}={meta.get(key)!r} but {first_path} has "
                                  f"{first.get(key)!r}; units of different tokenizers never mix")
    n_units = int(first.get("n_units", 0))
    if n_units <= 0:
        raise ConfigError(f"data.train[0].path: {first_path}/meta.json has no positive n_units")
    # The spec's files (k-means, a HuBERT folder) are named relative to the dataset folder (`slam tokenize`
    # copies the k-means in): anchor them there, so that save_model copies them into the model folder
    # whatever the working directory (a relative name would be looked up in the cwd and not found).
    tokenizer = dict(first.get("tokenizer") or {})
    for key in ("kmeans", "model"):
        value = tokenizer.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (Path(first_path) / value).exists():
            tokenizer[key] = str((Path(first_path) / value).resolve())
    return SlamInfo(n_units=n_units, tokenizer=tokenizer, tokenizer_hash=str(first.get("tokenizer_hash", "")))


def _interleaved_layout(cfg: TrainConfig) -> SlamInfo:
    """The base's (or data.text_tokenizer's) text tokenizer plus the units datasets' tokenizer. A hub
    tokenizer is saved into the run folder, so the model folder can carry it."""
    d = cfg.data
    tok_ref = d.text_tokenizer or cfg.model.base
    base_info = Path(str(cfg.model.base)) / "slam.json"
    if not d.text_tokenizer and base_info.is_file():  # a slam text LM folder carries its tokenizer inside
        inner = json.loads(base_info.read_text()).get("text_tokenizer")
        if inner:
            tok_ref = str(Path(str(cfg.model.base)) / inner)
    tok = load_text_tokenizer(tok_ref)
    tok_path = Path(tok_ref)
    if not tok_path.is_dir():
        tok_path = Path(cfg.out) / TEXT_TOKENIZER_DIR
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            tok.save_pretrained(str(tok_path))
    try:
        speech = units_layout([s.path for s in d.train if stream_of(cfg, s) != "text"])
    except SlamError as e:
        raise ConfigError(f"data.train: {e}") from None
    text_rows = 0
    if cfg.model.base is not None:
        from transformers import AutoConfig  # heavy: only when a base model is named

        text_rows = int(AutoConfig.from_pretrained(str(cfg.model.base)).vocab_size)
    return interleaved_layout(tok, speech.n_units, text_rows, speech.tokenizer, speech.tokenizer_hash,
                              tok_path.resolve())


# --- loaders --------------------------------------------------------------------------------------------------
class TrainData:
    """This rank's micro-batches, already on the device; its position is the packed loader's."""

    def __init__(self, loader: PackedLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def next(self) -> dict[str, Any]:
        batch = self.loader.next_batch()
        # FLOPs bookkeeping on the host copy: summing position_ids on the GPU would be a sync per micro-batch
        batch["n_pairs"] = doc_pairs(batch["position_ids"])
        return batch_to(batch, self.device)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


class ValData:
    """The first `n` packed batches of the held-out documents (the same ones at every evaluation)."""

    def __init__(self, loader: PackedLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def batches(self, n: int) -> Iterator[dict[str, Any]]:
        total = self.loader.batches_per_epoch
        for i in range(min(n, total) if n else total):
            yield batch_to(self.loader.make_batch(0, i), self.device)


def _build(cfg: TrainConfig, info: SlamInfo, path: str, stream: str, frac: float, text_tok: Any,
           progress: bool) -> tuple[Any, Any]:
    """(training, held-out) documents of one source; held-out None when frac is 0."""
    interleaved = cfg.data.kind == "interleaved"
    if stream == "interleaved":  # the costly one (~0.2 ms of CPU per utterance): built once, split by id hash
        full = interleaved_source(path, info, text_tok, cfg.data.interleave, cfg.seed, progress=progress)
        if frac <= 0:
            return full, None
        held = val_mask(full.ids, frac)
        return subset(full, ~held), subset(full, held)
    if stream == "speech":
        name = f"{Path(path).name}:speech" if interleaved else None
        split = (lambda sp: units_source(path, info, split=sp, val_fraction=frac, name=name))
    else:
        files = [str(f) for f in text_files(Path(path))]
        if interleaved:
            split = (lambda sp: text_stream_source(files, info, text_tok, sp, frac))
        else:
            split = (lambda sp: text_source(files, text_tok, split=sp, val_fraction=frac, bos_id=info.bos_id,
                                            eos_id=info.eos_id))
    return split("train" if frac > 0 else "all"), (split("val") if frac > 0 else None)


def loaders(cfg: TrainConfig, info: SlamInfo, env: dist.Env) -> tuple[TrainData, ValData]:
    """Packed train loader (mixing weights, seeded order) and the validation loader, both sharded by rank."""
    d = cfg.data
    text_tok = None
    if d.kind == "interleaved":
        text_tok = load_text_tokenizer(info.text_tokenizer)
    elif d.kind == "text":
        text_tok = _auto_tokenizer(d.text_tokenizer)
    frac = 0.0 if d.val else d.val_fraction
    streams = [stream_of(cfg, s) for s in d.train]
    built = [_build(cfg, info, s.path, k, frac, text_tok, env.main) for s, k in zip(d.train, streams)]
    if env.main and frac > 0:
        for s, (t, v) in zip(d.train, built):
            if v is not None and len(v) == 1 and frac * (len(t) + 1) < 1:
                print(f"slam train: data.val_fraction {frac} of {s.path}'s {len(t) + 1} documents rounds to none; "
                      f"holding out 1 document for validation")
    if d.min_length or d.max_length is not None:
        before = [len(t) + (len(v) if v is not None else 0) for t, v in built]
        built = [(keep_lengths(t, d.min_length, d.max_length),
                  None if v is None else keep_lengths(v, d.min_length, d.max_length)) for t, v in built]
        if env.main:
            for s, n, (t, v) in zip(d.train, before, built):
                kept = len(t) + (len(v) if v is not None else 0)
                print(f"slam train: {s.path}: {n - kept} of {n} documents outside data.min_length "
                      f"{d.min_length} .. data.max_length {d.max_length} tokens left out")
        if any(len(t) == 0 for t, _ in built):
            raise ConfigError(f"data.min_length / data.max_length: no training document of "
                              f"{[s.path for s, (t, _) in zip(d.train, built) if len(t) == 0][0]} is left")
    train_src = [t for t, _ in built]
    if d.val:
        val_src = [keep_lengths(_build(cfg, info, d.val, _val_stream(cfg), 0.0, text_tok, env.main)[0],
                                d.min_length, d.max_length)]
    else:
        val_src = [v for _, v in built]
    val_src = [s for s in val_src if s is not None and len(s) > 0]
    if not val_src:
        raise ConfigError(f"data.val_fraction: {d.val_fraction} of the training documents holds none out; "
                          f"raise it or give a data.val source")
    weights = [s.weight for s in d.train] if d.train[0].weight is not None else None
    try:
        # Compiled blocks (static shapes) would recompile for every new count of documents in a batch: on
        # the GPU the boundaries are padded to a multiple of 64 (a no-op document of length 0) instead.
        bucket = 64 if (cfg.compile and env.device.type == "cuda") else 0
        train = PackedLoader(train_src, seq_len=d.context, batch_size=cfg.batch.micro, weights=weights,
                             seed=cfg.seed, rank=env.rank, world_size=env.world, pad_id=info.pad_id, cu_bucket=bucket)
        val = PackedLoader(val_src, seq_len=d.context, batch_size=cfg.batch.micro, shuffle=False, infinite=False,
                           rank=env.rank, world_size=env.world, pad_id=info.pad_id)
        train.plan()
        val.plan()
    except SlamError as e:
        raise ConfigError(f"data: {e}") from None
    if env.main and d.kind == "interleaved":
        for s, k in zip(train_src, streams):
            stats = getattr(s, "stats", None)
            extra = (f"; {stats['speech_word_share']:.0%} of words / {stats['speech_token_share']:.0%} of tokens "
                     f"as speech, {stats['skipped_without_words']} rows without word times skipped") if stats else ""
            print(f"slam train: {k} stream {s.name}: {len(s)} documents, {int(s.lengths().sum()):,} tokens{extra}")
    return TrainData(train, env.device), ValData(val, env.device)


def prepare_model(model: nn.Module, device: torch.device) -> None:
    """On GPU, attention runs the varlen kernel on the loader's document boundaries (slam.attention); on
    CPU the SDPA path with per-document position_ids and no cache keeps documents apart."""
    if device.type == "cuda":
        use_varlen_attention(model)


def loss_fn() -> Callable:
    return causal_lm_loss
