"""Shared test fixtures. Everything is built locally: no hub, no downloads."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two xdist workers on two cores: one torch thread each, or they fight over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


def synth_speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A deterministic speech-like signal: harmonic tones whose pitch and formants change every 80 ms."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    seg = max(1, int(0.08 * sr))
    f0 = np.repeat(rng.uniform(90, 220, size=n // seg + 1), seg)[:n]
    phase = 2 * np.pi * np.cumsum(f0) / sr
    amp = np.repeat(rng.uniform(0.2, 1.0, size=(n // seg + 1, 4)), seg, axis=0)[:n]
    x = sum(amp[:, k] * np.sin((k + 1) * phase) for k in range(4))
    x += 0.02 * rng.standard_normal(n)
    x *= 0.5 * (1 + np.sin(2 * np.pi * 3 * t))  # syllable-rate envelope
    return (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


@pytest.fixture
def speechlike():
    return synth_speechlike


_passed = 0


def pytest_runtest_logreport(report):
    global _passed
    if report.when == "call" and report.passed:
        _passed += 1


def pytest_sessionfinish(session, exitstatus):
    # "No tests ran" must never look green: pytest already exits 5 on an empty collection; here we also
    # fail when everything collected was skipped or deselected. Only the xdist controller decides.
    if hasattr(session.config, "workerinput"):
        return
    if exitstatus == 0 and _passed == 0:
        print("\nERROR: no test passed (all skipped or deselected)")
        session.exitstatus = 1
