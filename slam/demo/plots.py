"""The demo report's two plots: loss curves of every run, and accuracy per benchmark with its 95% CI."""

from __future__ import annotations

from pathlib import Path

from slam.demo.plan import BENCH_TITLES, BENCHMARKS, CHANCE, MODEL_TITLES, MODELS

# --- plots ------------------------------------------------------------------------------------------------
def plot_losses(data: dict, path: Path) -> Path | None:
    """Loss curves: the two speech LMs (train and validation, against training minutes), the text LM, and
    the DPO run (loss and reward accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    if not runs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"scratch": "tab:gray", "twist": "tab:blue", "text": "tab:green", "twist-dpo": "tab:red"}
    ax = axes[0]
    for name in ("scratch", "twist"):
        rows = runs.get(name, {}).get("rows", [])
        for kind, style in (("train", "-"), ("val", "o--")):
            pts = [r for r in rows if r.get("kind") == kind and r.get("loss") is not None]
            if pts:
                ax.plot([60 * r.get("train_hours", 0) for r in pts], [r["loss"] for r in pts], style, ms=3,
                        color=colors[name], label=f"{MODEL_TITLES[name]} ({kind})", alpha=0.9 if kind == "val" else 0.6)
    ax.set(title="speech LMs: same budget, same size", xlabel="training minutes", ylabel="loss (nats / unit)")
    ax = axes[1]
    rows = runs.get("text", {}).get("rows", [])
    for kind, style in (("train", "-"), ("val", "o--")):
        pts = [r for r in rows if r.get("kind") == kind and r.get("loss") is not None]
        if pts:
            ax.plot([60 * r.get("train_hours", 0) for r in pts], [r["loss"] for r in pts], style, ms=3,
                    color=colors["text"], label=f"text LM ({kind})")
    ax.set(title="text LM (initialises TWIST)", xlabel="training minutes", ylabel="loss (nats / word)")
    ax = axes[2]
    rows = runs.get("twist-dpo", {}).get("rows", [])
    pts = [r for r in rows if r.get("kind") == "train" and r.get("loss") is not None]
    if pts:
        ax.plot([r["step"] for r in pts], [r["loss"] for r in pts], "-", color=colors["twist-dpo"], label="DPO loss")
        if any("reward_accuracy" in r for r in pts):
            ax2 = ax.twinx()
            ax2.plot([r["step"] for r in pts], [r.get("reward_accuracy", float("nan")) for r in pts], ":",
                     color="black", label="reward accuracy")
            ax2.set_ylabel("reward accuracy")
            ax2.set_ylim(0, 1)
            ax2.legend(loc="upper right", fontsize=8)
    ax.set(title="DPO on spoken preference pairs", xlabel="optimiser step", ylabel="DPO loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left" if ax is axes[2] else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_accuracy(data: dict, path: Path) -> Path | None:
    """Accuracy per benchmark and model with its 95% CI, and the chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    res = data["results"]
    models = [m for m in MODELS if m in res]
    if not models:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(models)
    colors = {"scratch": "tab:gray", "twist": "tab:blue", "twist-dpo": "tab:red"}
    x = np.arange(len(BENCHMARKS))
    for i, m in enumerate(models):
        vals = [res[m].get(b, {}).get("value", float("nan")) for b in BENCHMARKS]
        lo = [v - res[m].get(b, {}).get("ci95", [v, v])[0] for b, v in zip(BENCHMARKS, vals)]
        hi = [res[m].get(b, {}).get("ci95", [v, v])[1] - v for b, v in zip(BENCHMARKS, vals)]
        ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3,
               color=colors[m], label=MODEL_TITLES[m])
    ax.axhline(CHANCE, color="black", ls="--", lw=1, label="chance")
    ax.set_xticks(x, [BENCH_TITLES[b] for b in BENCHMARKS])
    ax.set_ylabel("accuracy (%), 95% CI")
    ax.set_ylim(30, 100)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


