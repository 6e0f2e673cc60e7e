"""What the demo's numbers say about the paper's findings: each finding with its number and a plain verdict.

The findings checked (Slamming builds on them): a speech LM learns grammar from speech alone (sBLIMP above
chance); TWIST, a speech LM initialised from a text LM that has read far more text than the speech LM hears
speech, beats the same model from scratch, most on the semantic benchmarks (sSC/tSC); DPO on synthetic
spoken preference pairs improves story cloze further. A difference counts as reproduced only when its 95%
interval excludes 0: the unpaired interval of two proportions (conservative: both models score the same
pairs), or, with several seeds, when every seed agrees in sign as well.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from statistics import mean, stdev

from slam.eval.pairs import wilson

BENCH = {"grammar": "grammar", "story": "story cloze", "topic": "topic cloze"}
PUBLISHED = {"grammar": "sBLIMP", "story": "sSC", "topic": "tSC"}
NAMES = {"scratch": "scratch", "twist": "TWIST", "twist-dpo": "TWIST + DPO"}


def seed_values(data: dict, model: str, bench: str) -> list[float]:
    """Accuracy (%) of `model` on `bench` for every training seed evaluated (first seed first)."""
    return [r[model][bench]["value"] for r in data["seeds"].values() if model in r and bench in r[model]]


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{mean(xs):.1f} ± {stdev(xs):.1f}"


def seed_table(data: dict, models: tuple[str, ...], titles: dict, bench_titles: dict) -> list[list[str]]:
    """Mean ± standard deviation over the training seeds (each seed: the same 1,000 pairs per benchmark)."""
    n = len(data["seeds"])
    rows = [[f"model (mean ± sd over {n} seeds)"] + [bench_titles[b] for b in BENCH]]
    for m in models:
        if any(m in r for r in data["seeds"].values()):
            rows.append([titles[m]] + [mean_sd(seed_values(data, m, b)) for b in BENCH])
    rows.append(["per seed"] + [" / ".join(f"{s}: " + "/".join(f"{r[m][b]['value']:.1f}" for m in models if m in r)
                                           for s, r in data["seeds"].items()) for b in BENCH])
    return rows


def _diff(a: dict, b: dict) -> tuple[float, float, float]:
    """b - a in points with the unpaired 95% interval."""
    pa, pb = a["value"] / 100, b["value"] / 100
    se = math.sqrt(pa * (1 - pa) / a["n"] + pb * (1 - pb) / b["n"])
    d = 100 * (pb - pa)
    return d, d - 196 * se, d + 196 * se


def compare(data: dict, base: str, new: str, bench: str) -> tuple[str, str]:
    """('+2.3 points [-2.1, 6.7]' or with seeds '+2.3 (seeds +1.0/+3.1/+2.8)', verdict)."""
    res = data["results"]
    if base not in res or new not in res or bench not in res[base] or bench not in res[new]:
        return "-", "not measured"
    d, lo, hi = _diff(res[base][bench], res[new][bench])
    text = f"{res[base][bench]['value']:.1f} -> {res[new][bench]['value']:.1f}: {d:+.1f} points [{lo:+.1f}, {hi:+.1f}]"
    per_seed = [n - b for b, n in zip(seed_values(data, base, bench), seed_values(data, new, bench))]
    if len(per_seed) > 1:
        text += f"; over {len(per_seed)} seeds {mean(per_seed):+.1f} ± {stdev(per_seed):.1f} (" + ", ".join(
            f"{x:+.1f}" for x in per_seed) + ")"
        same_sign = all(x > 0 for x in per_seed)
    else:
        same_sign = True
    if lo > 0 and same_sign:
        verdict = "reproduced"
    elif d > 0:
        verdict = "same direction, not significant"
    else:
        verdict = "not reproduced"
    return text, verdict


def text_vs_speech(data: dict) -> str | None:
    """How much more the text LM read than the speech LMs heard, in stories and tokens."""
    out = Path(data["out"])
    plan, units = data["state"].get("plan", {}), data["units"]
    text_file = out / "corpus" / "stories.txt"
    if not units or not text_file.exists():
        return None
    lines = text_file.read_text().splitlines()
    # the text LM's word-level tokenizer: one token per word or punctuation mark, plus </s>
    text_tok = sum(len(re.findall(r"\w+|[^\w\s]", ln)) + 1 for ln in lines) / max(len(lines), 1)
    unit_tok = units["n_tokens"] / max(units["n_utterances"], 1)
    runs = data["runs"]
    read = ""
    if "text" in runs and "scratch" in runs and runs["text"]["done"] and runs["scratch"]["done"]:
        t, s = runs["text"]["done"]["tokens"], runs["scratch"]["done"]["tokens"]
        read = (f"; in training the text LM read {t:,} tokens (~{t / text_tok:,.0f} stories), each speech LM "
                f"{s:,} units (~{s / unit_tok:,.0f} stories)")
    return (f"text: {len(lines):,} stories for the text LM, the first {plan.get('stories', 0):,} of them spoken for "
            f"the speech LMs; a story is {text_tok:.1f} word tokens as text and {unit_tok:.1f} units as speech "
            f"({unit_tok / text_tok:.1f}x){read}")


def dpo_heldout(data: dict) -> str | None:
    run = data["runs"].get("twist-dpo")
    done = (run or {}).get("done") or {}
    val = done.get("val")
    if not isinstance(val, dict) or not val.get("pairs"):
        return None
    n, acc = int(val["pairs"]), float(val["reward_accuracy"])
    lo, hi = wilson(acc, n)
    train = [r for r in run["rows"] if r.get("kind") == "train" and "reward_accuracy" in r]
    last = f"; on its training pairs (last step) {train[-1]['reward_accuracy']:.2f}" if train else ""
    return (f"DPO reward accuracy on {n} held-out preference pairs (never trained on): {100 * acc:.1f}% "
            f"[{100 * lo:.1f}, {100 * hi:.1f}] (chance 50%), margin {val['reward_margin']:+.3f}{last}")


def findings(data: dict) -> list[tuple[str, str, str]]:
    """(finding, the demo's number, verdict) rows."""
    res = data["results"]
    rows = []
    g = res.get("scratch", {}).get("grammar")
    if g:
        lo = g["ci95"][0]
        rows.append(("A speech LM learns grammar from speech alone (sBLIMP above chance)",
                     f"scratch {g['value']:.1f} [{lo:.1f}, {g['ci95'][1]:.1f}]",
                     "reproduced" if lo > 50 else "not reproduced"))
    for b in ("story", "topic"):
        for m in ("scratch", "twist", "twist-dpo"):
            r = res.get(m, {}).get(b)
            if r and m == "scratch":
                rows.append((f"A speech LM from scratch is above chance on {BENCH[b]} ({PUBLISHED[b]}-like)",
                             f"{NAMES[m]} {r['value']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]",
                             "reproduced" if r["ci95"][0] > 50 else "not reproduced"))
    for b in ("story", "topic"):
        text, v = compare(data, "scratch", "twist", b)
        rows.append((f"TWIST (init from a text LM that read far more text) beats scratch on {BENCH[b]}", text, v))
    for b in ("story", "topic", "grammar"):
        text, v = compare(data, "twist", "twist-dpo", b)
        rows.append((f"DPO on spoken preference pairs improves {BENCH[b]} (before: TWIST, after: TWIST + DPO)",
                     text, v))
    for b in ("story", "topic"):
        text, v = compare(data, "scratch", "twist-dpo", b)
        rows.append((f"TWIST + DPO, the full recipe, beats scratch on {BENCH[b]}", text, v))
    return rows
