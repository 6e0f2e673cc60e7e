"""DPO data: preference pairs as model ids, packed two sequences a pair into one row, in a resumable seeded
order (`slam dpo`; slam.prefs reads the files)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from slam.attention import cu_seqlens_from_position_ids
from slam.data import in_val_split
from slam.errors import ConfigError, SlamError
from slam.prefs import load_prefs
from slam.train.config import DPOConfig


@dataclass
class EncodedPairs:
    """Every pair as model ids: prompt `<s> units`, completions `units <s>` (slamkit's tokenisation)."""

    ids: list[str]
    prompt: list[np.ndarray]
    chosen: list[np.ndarray]
    rejected: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=12)
        for i in range(len(self)):
            h.update(self.ids[i].encode())
            for a in (self.prompt[i], self.chosen[i], self.rejected[i]):
                h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def encode_pairs(pairs: list, info: Any) -> EncodedPairs:
    return EncodedPairs([p.id for p in pairs], [info.units_to_ids(p.prompt, bos=True, eos=False) for p in pairs],
                        [info.units_to_ids(p.chosen, bos=False, eos=True) for p in pairs],
                        [info.units_to_ids(p.rejected, bos=False, eos=True) for p in pairs])


def collate(pairs: EncodedPairs, index: np.ndarray) -> dict[str, Any]:
    """Pairs -> one packed row [1, T]: sequence 2j = prompt+chosen, 2j+1 = prompt+rejected of pair j.

    The completion tokens are the targets: `target_pos` = the row positions whose logits predict one (the
    token before it), `target_ids` = that token, `target_owner` = its sequence. Computed here, on the host,
    so the forward needs no boolean mask (no device sync) and only those rows of the logits are scored."""
    ids, pos, tpos, tids, town = [], [], [], [], []
    start = 0
    for j, i in enumerate(index):
        p = pairs.prompt[i]
        for k, comp in enumerate((pairs.chosen[i], pairs.rejected[i])):
            seq = np.concatenate([p, comp])
            ids.append(seq)
            pos.append(np.arange(len(seq)))
            tpos.append(start + np.arange(len(p) - 1, len(seq) - 1))
            tids.append(comp)
            town.append(np.full(len(comp), 2 * j + k, dtype=np.int64))
            start += len(seq)
    position_ids = np.concatenate(pos)[None]
    cu, max_len = cu_seqlens_from_position_ids(position_ids)
    cu_t = torch.from_numpy(cu)
    return {"input_ids": torch.from_numpy(np.concatenate(ids)[None]), "position_ids": torch.from_numpy(position_ids),
            "target_pos": torch.from_numpy(np.concatenate(tpos)), "target_ids": torch.from_numpy(np.concatenate(tids)),
            "target_owner": torch.from_numpy(np.concatenate(town)),
            "index": torch.from_numpy(np.asarray(index, dtype=np.int64)),
            "cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": max_len, "max_length_k": max_len,
            "n_tokens": int(position_ids.shape[1])}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class PairLoader:
    """Seeded shuffled order of the training pairs, `micro` pairs per rank per micro-batch; its position
    {epoch, batch} resumes exactly (the order is a pure function of seed and epoch). The last incomplete
    global micro-batch of an epoch is skipped, so every rank always gets full micro-batches."""

    def __init__(self, train_index: np.ndarray, micro: int, seed: int, rank: int = 0, world: int = 1,
                 fingerprint: str = "") -> None:
        self.index = np.asarray(train_index, dtype=np.int64)
        self.micro, self.seed, self.rank, self.world = int(micro), int(seed), int(rank), int(world)
        self.per_epoch = len(self.index) // (self.micro * self.world)
        if self.per_epoch == 0:
            raise ConfigError(f"batch.micro: {len(self.index)} training pairs are fewer than one micro-batch of "
                              f"{self.micro} pairs on each of {self.world} processes")
        self.fp = fingerprint
        self.epoch, self.batch = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            self._order = (epoch, self.index[rng.permutation(len(self.index))])
        return self._order[1]

    def next(self) -> np.ndarray:
        if self.batch >= self.per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        first = (self.batch * self.world + self.rank) * self.micro
        self.batch += 1
        return self.order(self.epoch)[first:first + self.micro]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "global_micro": self.micro * self.world,
                "fingerprint": self.fp}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["seed"]) != self.seed or int(state["global_micro"]) != self.micro * self.world:
            raise SlamError(f"data position was saved with seed {state['seed']} and {state['global_micro']} pairs "
                            f"per micro-step, this run has {self.seed} and {self.micro * self.world}; resume "
                            f"with the same settings")
        if state.get("fingerprint") and state["fingerprint"] != self.fp:
            raise SlamError("the preference pairs changed since the checkpoint; resume with the same data")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def load_pairs(cfg: DPOConfig, info: Any, main: bool = True) -> tuple[EncodedPairs, np.ndarray, np.ndarray, dict]:
    """All pairs (train then val) as ids, the train and val indices into them, and counts for the log."""
    try:
        train, stats = load_prefs(cfg.data.train, info, model_dir=cfg.model, progress=main)
        val = load_prefs(cfg.data.val, info, model_dir=cfg.model, progress=main)[0] if cfg.data.val else []
    except SlamError as e:
        raise ConfigError(f"data: {e}") from None
    if not cfg.data.val and cfg.data.val_fraction > 0:
        held = [in_val_split(p.id, cfg.data.val_fraction) for p in train]
        val = [p for p, h in zip(train, held) if h]
        train = [p for p, h in zip(train, held) if not h]
    pairs = encode_pairs(train + val, info)
    lengths = np.array([len(p) + max(len(c), len(r)) for p, c, r in zip(pairs.prompt, pairs.chosen, pairs.rejected)])
    ok = lengths <= cfg.data.max_length
    n_train = len(train)
    train_idx = np.flatnonzero(ok[:n_train])
    val_idx = n_train + np.flatnonzero(ok[n_train:])
    counts = {**stats, "train_pairs": int(len(train_idx)), "val_pairs": int(len(val_idx)),
              "too_long": int((~ok).sum()), "mean_tokens_per_sequence": float(lengths.mean()) if len(lengths) else 0.0}
    return pairs, train_idx, val_idx, counts


