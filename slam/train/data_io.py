"""The recipe's `data` section -> token layout, packed train/validation loaders and the loss (slam.data).

Kept apart from the loop so that the DPO and interleaved stages can reuse the loop pieces with their own
data. Path and split problems surface here, before any model is built, as one-line errors naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from slam.errors import ConfigError, SlamError
from slam.tokens import SlamInfo
from slam.train import dist
from slam.train.config import TrainConfig
from slam.train.flops import doc_pairs


def _text_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.txt")) if path.is_dir() else [path]


def check_sources(cfg: TrainConfig) -> None:
    """Every data path exists and is of the kind the recipe says (units dataset folder / text)."""
    d = cfg.data
    if d.kind == "interleaved":
        from slam.interleave import check_sources as check_interleaved

        return check_interleaved(cfg)
    if not d.train:
        raise ConfigError("data.train: no training source given (a list of {path, weight})")
    weights = [s.weight is not None for s in d.train]
    if any(weights) and not all(weights):
        raise ConfigError("data.train: give every source a weight, or none (natural proportions)")
    entries = [(f"data.train[{i}].path", s.path) for i, s in enumerate(d.train)]
    if d.val is not None:
        entries.append(("data.val", d.val))
    if d.kind == "text":
        entries.append(("data.text_tokenizer", d.text_tokenizer))
    for field, path in entries:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{field}: {path!r} does not exist")
        if field == "data.text_tokenizer":
            continue
        if d.kind == "units" and not (p / "meta.json").exists():
            raise ConfigError(f"{field}: {path!r} is not a units dataset (no meta.json; make one with "
                              f"`slam tokenize`)")
        if d.kind == "text" and not _text_files(p):
            raise ConfigError(f"{field}: {path!r} holds no .txt file")


def token_layout(cfg: TrainConfig) -> SlamInfo:
    """The model's vocabulary: units of the datasets (pad, <s>, units) or the text tokenizer's."""
    d = cfg.data
    if d.kind == "interleaved":
        from slam.interleave import token_layout as interleaved_layout

        return interleaved_layout(cfg)
    if d.kind == "text":
        from transformers import AutoTokenizer

        if cfg.model.base is not None:
            raise ConfigError("model.base: data.kind=text pre-trains a text LM from random init; set "
                              "model.base: null and give model.config")
        tok = AutoTokenizer.from_pretrained(d.text_tokenizer)
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return SlamInfo(n_units=0, vocab_size=len(tok), pad_id=pad, bos_id=bos, eos_id=tok.eos_token_id,
                        unit_offset=len(tok), text_tokenizer=str(d.text_tokenizer))
    from slam.units.dataset import read_meta

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


class TrainData:
    """This rank's micro-batches, already on the device; its position is the packed loader's."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def next(self) -> dict[str, Any]:
        from slam.data import batch_to

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

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def batches(self, n: int) -> Iterator[dict[str, Any]]:
        from slam.data import batch_to

        total = self.loader.batches_per_epoch
        for i in range(min(n, total) if n else total):
            yield batch_to(self.loader.make_batch(0, i), self.device)


def _sources(cfg: TrainConfig, info: SlamInfo, split: str, paths: list[str], val_fraction: float) -> list:
    from slam.data import text_source, units_source

    d = cfg.data
    if d.kind == "text":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d.text_tokenizer)
        return [text_source([str(f) for f in _text_files(Path(p))], tok, split=split, val_fraction=val_fraction,
                            bos_id=info.bos_id, eos_id=info.eos_id) for p in paths]
    return [units_source(p, info, split=split, val_fraction=val_fraction) for p in paths]


def loaders(cfg: TrainConfig, info: SlamInfo, env: dist.Env) -> tuple[TrainData, ValData]:
    """Packed train loader (mixing weights, seeded order) and the validation loader, both sharded by rank."""
    from slam.data import PackedLoader

    d = cfg.data
    if d.kind == "interleaved":
        from slam.interleave import loaders as interleaved_loaders

        return interleaved_loaders(cfg, info, env)
    paths = [s.path for s in d.train]
    frac = 0.0 if d.val else d.val_fraction
    train_src = _sources(cfg, info, "train", paths, frac)
    weights = [s.weight for s in d.train] if d.train[0].weight is not None else None
    val_src = _sources(cfg, info, "all", [d.val], 0.0) if d.val else _sources(cfg, info, "val", paths, frac)
    val_src = [s for s in val_src if len(s) > 0]
    if not val_src:
        raise ConfigError(f"data.val_fraction: {d.val_fraction} of the training documents holds none out; "
                          f"raise it or give a data.val source")
    try:
        train = PackedLoader(train_src, seq_len=d.context, batch_size=cfg.batch.micro, weights=weights,
                             seed=cfg.seed, rank=env.rank, world_size=env.world, pad_id=info.pad_id)
        val = PackedLoader(val_src, seq_len=d.context, batch_size=cfg.batch.micro, shuffle=False,
                           infinite=False, rank=env.rank, world_size=env.world, pad_id=info.pad_id)
        train.plan()
        val.plan()
    except SlamError as e:
        raise ConfigError(f"data: {e}") from None
    return TrainData(train, env.device), ValData(val, env.device)


def prepare_model(model: nn.Module, device: torch.device) -> None:
    """On GPU, attention runs the varlen kernel on the loader's document boundaries (slam.attention); on
    CPU the SDPA path with per-document position_ids and no cache keeps documents apart."""
    if device.type == "cuda":
        from slam.attention import use_varlen_attention

        use_varlen_attention(model)


def loss_fn() -> Callable:
    from slam.data import causal_lm_loss

    return causal_lm_loss
