"""The training budget: what has been spent, the progress p in [0, 1] it gives, and when to stop.

Time is counted around training steps only: the loop wraps each optimiser step in `with budget.step():`,
so evaluation, checkpoint writes and compile warm-up never eat into the budget (they are timed by
`with budget.overhead_of(name):` and reported separately). Under several processes each rank's clock is
averaged once per step (`partial()` goes into the step's one all-reduce and `agree()` takes the mean), so
every rank sees the same p, the same LR and the same stop decision: no rank can leave the loop one step early
and hang the others in a collective.

    budget = Budget.from_config(cfg.budget)
    while not budget.done():
        with budget.step():
            ...                                   # forward/backward of the micro-batches
            budget.agree(all_reduced_partial / world)
            ...                                   # clip, optimiser step
        budget.add(steps=1, tokens=n)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from slam.train.config import BudgetConfig


@dataclass
class Budget:
    kind: str
    """"time", "tokens" or "steps"."""
    limit: float
    """Seconds, tokens or steps."""
    seconds: float = 0.0
    """Training time spent (steps only), agreed across ranks."""
    local_seconds: float = 0.0
    """This rank's own clock of the same (only the agreed `seconds` drives p)."""
    tokens: int = 0
    """Training tokens consumed (all ranks): the predicted ones, i.e. every packed token but a chunk's first."""
    steps: int = 0
    """Optimiser steps taken (including steps skipped for a non-finite loss: their compute was spent)."""
    overhead: dict[str, float] = field(default_factory=dict)
    """Seconds outside the budget by kind: eval, checkpoint, compile, restore."""
    _t0: float | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: BudgetConfig) -> "Budget":
        if cfg.time is not None:
            return cls("time", float(cfg.seconds))
        if cfg.tokens is not None:
            return cls("tokens", float(cfg.tokens))
        return cls("steps", float(cfg.steps))

    def spent(self) -> float:
        return {"time": self.seconds, "tokens": float(self.tokens), "steps": float(self.steps)}[self.kind]

    def progress(self) -> float:
        return min(1.0, self.spent() / self.limit)

    def done(self) -> bool:
        return self.spent() >= self.limit

    def eta_seconds(self) -> float | None:
        """Training seconds left at the current pace (None before the first step)."""
        p = self.progress()
        if self.kind == "time":
            return max(0.0, self.limit - self.seconds)
        if p <= 0 or self.seconds <= 0:
            return None
        return self.seconds * (1 - p) / p

    @contextmanager
    def step(self) -> Iterator[None]:
        """Time one training step on this rank's clock."""
        self._t0 = time.perf_counter()
        try:
            yield
        finally:
            self.local_seconds += time.perf_counter() - self._t0
            self._t0 = None

    def partial(self) -> float:
        """This rank's training seconds so far, including the running step (for the all-reduce)."""
        t0 = self._t0
        return self.local_seconds + (time.perf_counter() - t0 if t0 is not None else 0.0)

    def agree(self, seconds: float) -> None:
        """Adopt the all-reduced (mean over ranks) training time: p and the stop decision derive from it."""
        self.seconds = seconds

    @contextmanager
    def overhead_of(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.overhead[name] = self.overhead.get(name, 0.0) + time.perf_counter() - t0

    def add(self, steps: int = 0, tokens: int = 0) -> None:
        self.steps += steps
        self.tokens += tokens

    def state_dict(self) -> dict:
        return {"kind": self.kind, "limit": self.limit, "seconds": self.seconds, "tokens": self.tokens,
                "steps": self.steps, "overhead": dict(self.overhead)}

    def load_state_dict(self, state: dict) -> None:
        # The limit comes from the (possibly overridden) recipe of the resumed run, so a run can be extended
        # with budget.time=30h; what was spent comes from the checkpoint.
        self.seconds = self.local_seconds = float(state["seconds"])
        self.tokens = int(state["tokens"])
        self.steps = int(state["steps"])
        self.overhead = dict(state.get("overhead", {}))
