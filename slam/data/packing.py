"""Documents -> densely packed [B, S] training rows with per-document positions, and the token-weighted loss.

A document is an np.int64 array of model ids, already wrapped `<s> ... <s>`. Sources give random access to
their documents and their lengths (units datasets, text files, or any iterable of arrays); the loader lays the
documents of one epoch end to end in a seeded order and cuts the stream into rows of `seq_len` tokens:

    row 0: [<s> a a a a <s> <s> b b b | b b <s> <s> c ...]      positions 0 1 2 3 4 5 0 1 2 3 | 0 1 2 0 1 ...
                                      ^ row boundary: b continues in the next row, positions restart at 0

No padding inside an epoch (100% of the tokens are real); a document longer than a row, or cut by a row
boundary, is simply chunked, each chunk a separate attention context. Labels are the inputs with -100 at
every chunk's first token (it would otherwise be predicted from the previous document's last token) and on
padding, so with per-document attention (slam.attention) no token is predicted or attended across a boundary.

The loader's position is {epoch, batch}: the epoch's order is a pure function of (seed, epoch), and the row at
any index is found by a binary search on the cumulative lengths, so resuming a checkpoint gives the very same
batches without replaying anything.

Mixing: with weights, each source contributes that share of the epoch's TOKENS (a source runs as many
shuffled passes as its share needs, so a small synthetic set can be upsampled); the sources' documents are
merged by "token time" (tokens before the document / its source's share), which interleaves them evenly.
Without weights each document appears exactly once per epoch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from slam.attention import cu_seqlens_from_position_ids
from slam.data.sources import ArraySource, DocumentSource
from slam.errors import SlamError

IGNORE = -100
"""Label of a position that is not predicted (a chunk's first token, padding): cross_entropy's ignore_index."""

# --- epoch plan ----------------------------------------------------------------------------------------------
@dataclass
class EpochPlan:
    """Which documents an epoch streams, in order, and where each one starts in the token stream."""

    source: np.ndarray  # int32 [D] source index per document
    index: np.ndarray  # int64 [D] document index within its source
    start: np.ndarray  # int64 [D+1] cumulative token offsets (start[-1] = tokens in the epoch)

    @property
    def n_tokens(self) -> int:
        return int(self.start[-1])


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def plan_epoch(lengths: Sequence[np.ndarray], weights: Sequence[float] | None, seed: int, epoch: int,
               shuffle: bool = True) -> EpochPlan:
    """Deterministic document order for one epoch (see the module docstring for the mixing rule)."""
    totals = np.array([int(l.sum()) for l in lengths], dtype=np.int64)
    if totals.sum() == 0:
        raise SlamError("no training tokens: every source is empty")
    if weights is None:
        targets = totals.copy()  # every document exactly once
        shares = totals.astype(np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if len(w) != len(lengths) or (w < 0).any() or w.sum() <= 0:
            raise SlamError(f"mixing weights {list(weights)} must be one non-negative number per source")
        for i in np.flatnonzero((w > 0) & (totals == 0)):
            raise SlamError(f"source {i} has weight {w[i]} but no tokens")
        shares = w / w.sum()
        targets = np.round(shares * totals.sum()).astype(np.int64)
    srcs, idxs, keys, lens_out = [], [], [], []
    for s, (lens, target) in enumerate(zip(lengths, targets)):
        if target <= 0:
            continue
        order_parts, got, p = [], 0, 0
        while got < target:  # as many passes as this source's share needs (upsampling)
            perm = _rng(seed, epoch, s, p).permutation(len(lens)) if shuffle else np.arange(len(lens))
            order_parts.append(perm)
            got += int(totals[s])
            p += 1
        order = np.concatenate(order_parts)
        cum = np.cumsum(lens[order])
        n = int(np.searchsorted(cum, target, side="left")) + 1  # include the doc that reaches the target
        order = order[:n]
        l = lens[order]
        before = np.concatenate([[0], cum[:n - 1]])
        srcs.append(np.full(n, s, dtype=np.int32))
        idxs.append(order.astype(np.int64))
        keys.append((before + 0.5 * l) / shares[s])  # token-time of the document's middle
        lens_out.append(l)
    key = np.concatenate(keys)
    merged = np.argsort(key, kind="stable")
    source = np.concatenate(srcs)[merged]
    index = np.concatenate(idxs)[merged]
    lens_m = np.concatenate(lens_out)[merged]
    start = np.concatenate([[0], np.cumsum(lens_m)]).astype(np.int64)
    return EpochPlan(source=source, index=index, start=start)


# --- packed loader -------------------------------------------------------------------------------------------
class PackedLoader:
    """Infinite (or one-epoch) iterator of packed batches; its position is a small state dict.

    Each batch is a dict of CPU tensors: input_ids, labels, position_ids [B, S] (int64), the varlen kwargs
    cu_seq_lens_q/k (int32, over the flattened batch) and max_length_q/k (int), plus n_tokens (int: tokens
    that are predicted, i.e. labels[:, 1:] != -100); see `to_batch` for `cu_bucket`. With world_size > 1
    every rank builds the same epoch plan and takes its own B rows of each global batch, so all ranks share
    one position.
    """

    def __init__(self, sources: Sequence[DocumentSource], seq_len: int, batch_size: int,
                 weights: Sequence[float] | None = None, seed: int = 0, shuffle: bool = True,
                 infinite: bool = True, rank: int = 0, world_size: int = 1, pad_id: int = 0,
                 cu_bucket: int = 0) -> None:
        if seq_len < 2 or batch_size < 1:
            raise SlamError(f"seq_len must be >= 2 and batch_size >= 1 (got {seq_len}, {batch_size})")
        if not 0 <= rank < world_size:
            raise SlamError(f"rank {rank} outside world size {world_size}")
        self.sources = list(sources)
        if not self.sources:
            raise SlamError("no data sources given")
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.weights = None if weights is None else [float(w) for w in weights]
        self.seed, self.shuffle, self.infinite = int(seed), bool(shuffle), bool(infinite)
        self.rank, self.world_size, self.pad_id = int(rank), int(world_size), int(pad_id)
        self.cu_bucket = int(cu_bucket)
        self._lengths = [np.asarray(s.lengths(), dtype=np.int64) for s in self.sources]
        self.epoch, self.batch = 0, 0
        self._plan: EpochPlan | None = None
        self._plan_epoch = -1
        self._fingerprint: str | None = None

    # --- position ---------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of what fixes the batch sequence: document lengths per source, weights, seed, shapes."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.blake2b(digest_size=12)
        for lens in self._lengths:
            h.update(np.int64(len(lens)).tobytes())
            h.update(np.ascontiguousarray(lens, dtype=np.int64).tobytes())
        h.update(repr((self.weights, self.seed, self.shuffle, self.seq_len,
                       self.batch_size * self.world_size)).encode())
        self._fingerprint = h.hexdigest()  # sources are immutable: hash 14M lengths once, not per checkpoint
        return self._fingerprint

    def state_dict(self) -> dict[str, Any]:
        """The position of the NEXT batch (save it with the checkpoint of the step that consumed the last)."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch_rows": self.batch_size * self.world_size, "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("seq_len", self.seq_len),
                          ("global_batch_rows", self.batch_size * self.world_size)):
            if key in state and int(state[key]) != mine:
                raise SlamError(f"data position was saved with {key}={state[key]}, this run has {mine}; "
                                f"resume with the same data settings")
        if "fingerprint" in state and state["fingerprint"] != self.fingerprint():
            raise SlamError("the data changed since the checkpoint (other documents or mixing weights); "
                            "resume with the same datasets and weights")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """The epoch's document order (cached for the latest epoch asked for)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_epoch != epoch or self._plan is None:
            self._plan = plan_epoch(self._lengths, self.weights, self.seed, epoch, self.shuffle)
            self._plan_epoch = epoch
        return self._plan

    @property
    def batches_per_epoch(self) -> int:
        rows = -(-self.plan().n_tokens // self.seq_len)
        return -(-rows // (self.batch_size * self.world_size))

    @property
    def tokens_per_epoch(self) -> int:
        return self.plan().n_tokens

    # --- rows -------------------------------------------------------------------------------------------
    def _row(self, plan: EpochPlan, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.seq_len
        ids = np.full(s, self.pad_id, dtype=np.int64)
        pos = np.zeros(s, dtype=np.int64)
        lab = np.full(s, IGNORE, dtype=np.int64)
        a, end = r * s, min((r + 1) * s, plan.n_tokens)
        filled = 0
        if a < end:
            d = int(np.searchsorted(plan.start, a, side="right")) - 1
            while a < end:
                d0, d1 = plan.start[d], plan.start[d + 1]
                lo, hi = a - d0, min(end, d1) - d0
                doc = self.sources[plan.source[d]].doc(int(plan.index[d]))
                n = hi - lo
                ids[filled:filled + n] = doc[lo:hi]
                pos[filled:filled + n] = np.arange(n)
                lab[filled + 1:filled + n] = doc[lo + 1:hi]  # the chunk's first token has no context
                filled += n
                a = d0 + hi
                d += 1
        if filled < s:  # only the epoch's last row: a padding segment of its own, never a target
            pos[filled:] = np.arange(s - filled)
        return ids, pos, lab

    def make_batch(self, epoch: int, batch: int) -> dict[str, Any]:
        """Batch `batch` of epoch `epoch` for this rank (pure: does not move the position)."""
        plan = self.plan(epoch)
        first = batch * self.batch_size * self.world_size + self.rank * self.batch_size
        rows = [self._row(plan, first + i) for i in range(self.batch_size)]
        ids, pos, lab = (np.stack(x) for x in zip(*rows))
        return to_batch(ids, pos, lab, self.cu_bucket)

    def next_batch(self) -> dict[str, Any]:
        if self.batch >= self.batches_per_epoch:
            if not self.infinite:
                raise StopIteration
            self.epoch, self.batch = self.epoch + 1, 0
        out = self.make_batch(self.epoch, self.batch)
        self.batch += 1
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return


def to_batch(input_ids: np.ndarray, position_ids: np.ndarray, labels: np.ndarray, cu_bucket: int = 0
             ) -> dict[str, Any]:
    """numpy rows -> the batch dict (adds the varlen boundaries, computed here on the host, once per batch).

    `max_length_q/k` is the row length, an upper bound on every document (the kernel only sizes its grid
    with it) that stays constant, so a compiled block never recompiles on it. `cu_bucket` > 0 pads the
    cumulative lengths to a multiple of it with empty documents (repeats of the total), so that under
    `torch.compile(dynamic=False)` the number of documents in a batch stops being a new shape every step
    (~5 documents per 1024-token row: with 64, a [8, 1024] batch almost always has one shape).
    """
    cu, _ = cu_seqlens_from_position_ids(position_ids)
    if cu_bucket > 0:
        n = -(-(len(cu) - 1) // cu_bucket) * cu_bucket
        cu = np.concatenate([cu, np.full(n + 1 - len(cu), cu[-1], dtype=np.int32)])
    cu_t = torch.from_numpy(cu)
    max_len = int(input_ids.shape[1])
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids)),
        "labels": torch.from_numpy(np.ascontiguousarray(labels)),
        "position_ids": torch.from_numpy(np.ascontiguousarray(position_ids)),
        "cu_seq_lens_q": cu_t, "cu_seq_lens_k": cu_t, "max_length_q": max_len, "max_length_k": max_len,
        "n_tokens": int((labels[:, 1:] != IGNORE).sum()),
    }


def pack_documents(docs: Sequence[np.ndarray], seq_len: int, pad_id: int = 0) -> dict[str, Any]:
    """All documents, in order, packed into as many rows as they need (tests, scoring, small jobs)."""
    loader = PackedLoader([ArraySource(docs)], seq_len=seq_len, batch_size=1, shuffle=False, infinite=False,
                          pad_id=pad_id)
    plan = loader.plan()
    n_rows = -(-plan.n_tokens // seq_len)
    ids, pos, lab = (np.stack(x) for x in zip(*(loader._row(plan, r) for r in range(n_rows))))
    return to_batch(ids, pos, lab)


def batch_to(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move the tensors of a batch to a device (non-blocking; ints stay host-side, so no sync)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


