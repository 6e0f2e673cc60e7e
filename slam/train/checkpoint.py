"""Training checkpoints: `checkpoints/step-N/` with everything a resumed run needs to continue bit for bit.

    model.safetensors   model weights (fp32 master copy; tied tensors stored once, aliases in the metadata)
    optimizer.pt        optimiser state (tensors, numbers, strings only: read back with weights_only=True)
    rng.pt              torch / CUDA / numpy / python RNG states of every rank
    state.json          step, budget spent, schedule, data position, anything else the loop passes

A checkpoint is filled in a temp sibling (`.step-N.*.tmp`) and renamed into place (slam.utils.atomic_dir /
commit_dir), so a kill in the middle of a write leaves a temp folder that `latest` ignores and `cleanup`
removes: the run resumes from the previous complete checkpoint. Only rank 0 writes; all ranks take part in
gathering sharded (FSDP) state first.

    path = save(run / "checkpoints", step, model, optimizer, state, env, keep_last=2)
    state = load(latest(run / "checkpoints"), model, optimizer, env)
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slam.train import dist
from slam.utils import atomic_dir, atomic_write_json, commit_dir

_STEP_DIR = re.compile(r"^step-(\d+)$")


# --- RNG ------------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG states, in types `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# --- model tensors --------------------------------------------------------------------------------------------
def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses tensors that share memory (a tied LM head): store each storage once."""
    from safetensors.torch import save_file

    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_ptr: dict[tuple, str] = {}
    for key, t in state.items():
        sig = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if sig in by_ptr:
            aliases[key] = by_ptr[sig]
        else:
            by_ptr[sig] = key
            unique[key] = t.contiguous()
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases)})


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    for key, src in aliases.items():
        state[key] = state[src]
    return state


# --- save / load ----------------------------------------------------------------------------------------------
def step_dirs(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first (temp folders of interrupted writes never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest(folder: str | Path) -> Path | None:
    dirs = step_dirs(folder)
    return dirs[-1][1] if dirs else None


def cleanup(folder: str | Path) -> list[Path]:
    """Remove temp folders left by a write that was killed; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(".step-")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def save(folder: str | Path, step: int, model: nn.Module, optimizer: Any, state: dict[str, Any],
         env: dist.Env, keep_last: int = 2) -> Path:
    """Write `folder/step-{step}` atomically (collective: call on every rank) and prune to `keep_last`."""
    folder = Path(folder)
    final = folder / f"step-{step}"
    model_sd = dist.model_state(model)
    optim_sd = dist.optim_state(model, optimizer)
    rngs = [None] * env.world
    if env.distributed:
        torch.distributed.all_gather_object(rngs, rng_state())
    else:
        rngs = [rng_state()]
    if env.main:
        tmp = atomic_dir(final)
        _save_tensors(model_sd, tmp / "model.safetensors")
        torch.save(optim_sd, tmp / "optimizer.pt")
        torch.save(rngs, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", {"step": step, **state})
        commit_dir(tmp, final)
        for _, old in step_dirs(folder)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def read_state(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "state.json").read_text())


def load(path: str | Path, model: nn.Module, optimizer: Any, env: dist.Env,
         restore_rng: bool = True) -> dict[str, Any]:
    """Load weights, optimiser state and (optionally) this rank's RNG; returns the state.json dict."""
    path = Path(path)
    dist.load_model_state(model, _load_tensors(path / "model.safetensors"))
    if optimizer is not None:
        dist.load_optim_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=True))
    if restore_rng:
        rngs = torch.load(path / "rng.pt", weights_only=True)
        # A run resumed on a different number of processes reuses rank 0's state for the new ranks.
        set_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
    return read_state(path)
