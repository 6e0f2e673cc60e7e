"""Weights & Biases logging, optional (`pip install 'slam[wandb]'`); TensorBoard stays the default.

    slam train slam wandb.project=my-slm [wandb.entity=team wandb.name=run-1]     # train and dpo: recipe keys
    slam eval runs/slam/final --bench ... --wandb my-slm                          # eval: metrics + audio
    WANDB_MODE=offline slam train ...                                             # no network: wandb sync later

What goes there: every numeric field of every metrics.jsonl line as `<kind>/<name>` at its step (train: loss,
lr, grad_norm, tokens/s, MFU, progress; DPO: reward accuracy, margins, chosen/rejected rewards; val: the
validation loss or reward accuracy), the resolved recipe as the run's config, and, from `slam eval`, each
metric with its 95% CI and up to 8 generated continuations as audio. A run folder keeps its W&B run id
(wandb-run-id), so a resumed run continues the same W&B run. wandb is imported only when asked for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from slam.errors import SlamError

ID_FILE = "wandb-run-id"


def _wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise SlamError("W&B logging was asked for but wandb is not installed: pip install 'slam[wandb]'") from None
    return wandb


class WandbLogger:
    """One W&B run bound to a folder (the run folder, or the eval results' folder)."""

    def __init__(self, project: str, folder: str | Path, config: dict | None = None, *, entity: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, job_type: str = "train") -> None:
        wandb = _wandb()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self.run = wandb.init(project=project, entity=entity, name=name, tags=tags or None, config=config,
                                  dir=str(folder), id=run_id, resume="allow" if run_id else None, job_type=job_type)
        except Exception as e:  # not logged in, no network in online mode, bad entity: one line
            raise SlamError(f"wandb.project {project}: W&B could not start ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); run `wandb login`, or set "
                            f"WANDB_MODE=offline and `wandb sync` later") from None
        if run_id is None:
            id_file.write_text(self.run.id + "\n")
        self.wandb = wandb

    def log(self, kind: str, step: int, values: dict[str, Any]) -> None:
        row = {f"{kind}/{k}": v for k, v in values.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if row:
            self.run.log(row, step=int(step))

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def audio(self, key: str, files: list[Path], caption: list[str] | None = None) -> None:
        if files:
            self.run.log({key: [self.wandb.Audio(str(f), caption=(caption or [f.stem for f in files])[i])
                                for i, f in enumerate(files)]})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def log_eval(project: str, results: dict, out: str | Path, audio_dirs: list[Path] | None = None,
             entity: str | None = None) -> None:
    """`slam eval --wandb PROJECT`: each metric (value, CI, n, per group) into the summary and a table, and up
    to 8 generated continuations from `audio_dirs` as audio."""
    out = Path(out)
    log = WandbLogger(project, out.parent, {"model": results.get("model")}, entity=entity,
                      name=f"eval-{out.stem}", job_type="eval")
    flat: dict[str, Any] = {}
    for name, r in (results.get("metrics") or {}).items():
        if not isinstance(r, dict):
            continue
        if isinstance(r.get("value"), (int, float)):
            flat[f"eval/{name}"] = r["value"]
        ci = r.get("ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            flat[f"eval/{name}_ci_low"], flat[f"eval/{name}_ci_high"] = ci
        if "n" in r:
            flat[f"eval/{name}_n"] = r["n"]
        for g, gr in (r.get("groups") or {}).items():
            if isinstance(gr, dict) and isinstance(gr.get("value"), (int, float)):
                flat[f"eval/{name}/{g}"] = gr["value"]
    log.summary(flat)
    log.log("eval", 0, {k.split("/", 1)[1]: v for k, v in flat.items()})
    wavs = sorted(f for d in (audio_dirs or []) if d.is_dir() for f in d.rglob("*.wav"))[:8]
    log.audio("eval/generated", wavs)
    log.finish()
