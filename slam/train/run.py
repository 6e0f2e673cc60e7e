"""The run folder: resolved config, provenance, metrics.jsonl, TensorBoard events and loss.png.

    run/
      config.yaml        the resolved recipe (every default filled in): `slam train run/config.yaml` reruns it
      provenance.json    git SHA, library versions, device (one entry per start: resumes append)
      metrics.jsonl      one JSON object per line: {"kind": "train"|"val"|"event", "step", ...}
      events.out.tfevents.*   the same scalars for TensorBoard
      wandb/, wandb-run-id  with `wandb.project` set (optional extra slam[wandb]): the same scalars in W&B
      loss.png           train and validation loss against steps and FLOPs
      checkpoints/step-N/   (slam.train.checkpoint)
      final/             a model folder (slam.model_folder.save_model)

Only rank 0 creates a `Run` with `main=True`; the other ranks get one whose methods do nothing, so the loop
never branches on the rank to log.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from slam.config import to_dict
from slam.tracking import WandbLogger
from slam.utils import atomic_write_json, atomic_write_text, provenance, read_jsonl


class Run:
    def __init__(self, folder: str | Path, main: bool = True, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.main = main
        self._tb = None
        self._wandb: WandbLogger | None = None
        self._metrics = None
        if main:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.folder / "metrics.jsonl", "a", buffering=1)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.folder))

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"

    @property
    def final(self) -> Path:
        return self.folder / "final"

    def write_config(self, cfg: Any) -> None:
        """config.yaml; with `wandb.project` set, also starts (or, on resume, continues) the W&B run, the
        resolved recipe as its config."""
        if not self.main:
            return
        atomic_write_text(self.folder / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        wb = getattr(cfg, "wandb", None)
        if wb is not None and wb.project and self._wandb is None:
            self._wandb = WandbLogger(wb.project, self.folder, to_dict(cfg), entity=wb.entity,
                                      name=wb.name or self.folder.name, tags=list(wb.tags) or None,
                                      job_type="dpo" if hasattr(cfg, "dpo") else "train")

    def write_provenance(self, extra: dict[str, Any] | None = None) -> None:
        if not self.main:
            return
        path = self.folder / "provenance.json"
        starts = json.loads(path.read_text()) if path.exists() else []
        starts.append({**provenance(), **(extra or {})})
        atomic_write_json(path, starts)

    def log(self, kind: str, step: int, **values: Any) -> None:
        """One metrics line; numeric values also go to TensorBoard as `kind/name`."""
        if not self.main:
            return
        row = {"kind": kind, "step": step, **values}
        self._metrics.write(json.dumps(row, default=float) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log(kind, step, values)

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.folder)

    def rewind(self, step: int, redo_val: bool = False) -> int:
        """On resume: drop the metrics of steps after the checkpoint (they are recomputed), so the file and
        the plot hold one trajectory; `redo_val` also drops the validation at the checkpoint's own step (a run
        resumed at its end validates once more before writing final/). Returns how many lines were dropped."""
        if not self.main:
            return 0
        rows = self.read_metrics()
        keep = [r for r in rows if r.get("step", 0) < step or (r.get("step", 0) == step and not (
            redo_val and r.get("kind") == "val"))]
        self._metrics.close()
        atomic_write_text(self.folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in keep))
        self._metrics = open(self.folder / "metrics.jsonl", "a", buffering=1)
        return len(rows) - len(keep)

    def plot(self) -> Path | None:
        """loss.png: train/val loss against steps (left) and theoretical FLOPs (right)."""
        if not self.main:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read_metrics()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for kind, style in (("train", "-"), ("val", "o-")):
            pts = [r for r in rows if r.get("kind") == kind and r.get("loss") is not None]
            if not pts:
                continue
            axes[0].plot([r["step"] for r in pts], [r["loss"] for r in pts], style, label=kind, ms=3)
            axes[1].plot([r.get("flops", 0) for r in pts], [r["loss"] for r in pts], style, label=kind, ms=3)
        axes[0].set_xlabel("optimiser step")
        axes[1].set_xlabel("training FLOPs (6N x tokens + attention)")
        axes[1].set_xscale("symlog")
        for ax in axes:
            ax.set_ylabel("loss (nats / token)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = self.folder / "loss.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


def read_metrics(folder: str | Path) -> list[dict]:
    """The rows of a run folder's metrics.jsonl (none if it has none); a line cut by a kill is skipped."""
    return read_jsonl(Path(folder) / "metrics.jsonl")
