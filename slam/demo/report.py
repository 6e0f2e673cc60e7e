"""The demo's report: report.md and a self-contained report.html from what the demo folder holds.

    slam report demo-out          # (re)write demo-out/report.md, report.html, loss_curves.png, accuracy.png

Everything is read back from the files the stages wrote (nothing is typed in by hand): demo.json (plan,
machine, per-step commands and timings), corpus/corpus.json, units/train/meta.json, runs/*/metrics.jsonl
(losses), eval/*.json (`slam eval` results: accuracy, pair count, 95% CI, per group) and generate/*.wav.
The HTML page embeds the plots (PNG) and the audio (WAV) as data URIs, so it can be mailed or moved alone;
report.md links the same files relative to the folder.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from slam.demo import findings as fnd
from slam.demo.plan import BENCH_TITLES, BENCHMARKS, CHANCE, MODEL_TITLES, MODELS
from slam.demo.plots import plot_accuracy, plot_losses
from slam.train.run import read_metrics
from slam.utils import atomic_write_text, format_duration


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _metrics(run: Path) -> list[dict]:
    return read_metrics(run)


def collect(out: str | Path) -> dict:
    """Everything the report shows, as plain data (also what the tests check)."""
    out = Path(out)
    state = _read_json(out / "demo.json") or {}
    results = {}
    for m in MODELS:
        r = _read_json(out / "eval" / f"{m}.json")
        if r:
            results[m] = r["metrics"]
    # every training seed's results: the first seed's in eval/, the others' in eval/seed<S>/
    plan = state.get("plan", {})
    seeds = {plan.get("seed", 0): results}
    for folder in sorted((out / "eval").glob("seed*"), key=lambda f: int(f.name[4:]) if f.name[4:].isdigit() else 0):
        if folder.name[4:].isdigit():
            seeds[int(folder.name[4:])] = {m: _read_json(folder / f"{m}.json")["metrics"] for m in MODELS
                                           if (folder / f"{m}.json").exists()}
    runs = {}
    for name in ("text", "scratch", "twist", "twist-dpo"):
        rows = _metrics(out / "runs" / name)
        if rows:
            done = next((r for r in rows if r.get("kind") == "event" and r.get("event") == "done"), None)
            train = [r for r in rows if r.get("kind") == "train"]
            runs[name] = {"rows": rows, "done": done,
                          "params": _params(out / "runs" / name / "final"),
                          "tok_per_s": _median([r["tok_per_s"] for r in train if r.get("tok_per_s")])}
    audio = []
    for m in MODELS:
        units = out / "generate" / f"{m}.units.jsonl"
        if units.exists():
            for line in units.read_text().splitlines():
                rec = json.loads(line)
                audio.append({"model": m, "file": f"generate/{rec['file']}", "prompt": rec["prompt"],
                              "seconds": rec["seconds"], "continuation_seconds": rec["continuation_seconds"]})
    prompts = []
    man = out / "speech" / "prompts" / "manifest.jsonl"
    if man.exists():
        n = state.get("plan", {}).get("prompts", 2)
        for line in man.read_text().splitlines()[:n]:
            rec = json.loads(line)
            prompts.append({"id": rec["id"], "file": f"speech/prompts/{rec['audio']}", "text": rec["text"],
                            "seconds": rec["seconds"]})
    return {"out": str(out), "state": state, "results": results, "seeds": seeds, "runs": runs, "audio": audio, "prompts": prompts,
            "corpus": _read_json(out / "corpus" / "corpus.json"), "units": _read_json(out / "units" / "train" / "meta.json"),
            "prefs": _read_json(out / "prefs" / "build.json")}


def _params(model_dir: Path) -> int | None:
    """Parameter count from the safetensors header (no model load)."""
    f = model_dir / "model.safetensors"
    if not f.exists():
        return None
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    seen, total = set(), 0
    for k, v in header.items():
        if k == "__metadata__" or not isinstance(v, dict):
            continue
        span = tuple(v["data_offsets"])
        if span in seen:  # tied tensors share their bytes
            continue
        seen.add(span)
        total += math.prod(v["shape"])
    return total


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


# --- text -------------------------------------------------------------------------------------------------
def _acc(r: dict | None) -> str:
    if not r or r.get("value") is None or (isinstance(r["value"], float) and math.isnan(r["value"])):
        return "-"
    lo, hi = r["ci95"]
    mark = " *" if lo > CHANCE else ""
    return f"{r['value']:.1f} [{lo:.1f}, {hi:.1f}]{mark}"


def accuracy_table(data: dict) -> list[list[str]]:
    res = data["results"]
    rows = [["model"] + [BENCH_TITLES[b] for b in BENCHMARKS]]
    rows.append(["chance"] + [f"{CHANCE:.0f}" for _ in BENCHMARKS])
    for m in MODELS:
        if m in res:
            rows.append([MODEL_TITLES[m]] + [_acc(res[m].get(b)) for b in BENCHMARKS])
    ns = [str(next((res[m][b]["n"] for m in res if b in res[m]), "-")) for b in BENCHMARKS]
    rows.append(["pairs"] + ns)
    return rows


def group_table(data: dict) -> list[list[str]]:
    res = data["results"]
    models = [m for m in MODELS if m in res]
    rows = [["benchmark", "group", "pairs"] + [MODEL_TITLES[m] for m in models]]
    for b in BENCHMARKS:
        groups = sorted({g for m in models for g in res[m].get(b, {}).get("groups", {})})
        for g in groups:
            n = next((res[m][b]["groups"][g]["n"] for m in models if g in res[m].get(b, {}).get("groups", {})), "-")
            rows.append([b, g, str(n)] + [_acc(res[m].get(b, {}).get("groups", {}).get(g)) for m in models])
    return rows


def runs_table(data: dict) -> list[list[str]]:
    rows = [["run", "parameters", "training time", "steps", "tokens", "tokens/s (median)", "final val loss"]]
    for name in ("text", "scratch", "twist", "twist-dpo"):
        r = data["runs"].get(name)
        if not r:
            continue
        done = r["done"] or {}
        steps = max((x.get("step", 0) for x in r["rows"]), default=0)
        val = done.get("val_loss")
        if val is None and isinstance(done.get("val"), dict):
            val = done["val"].get("loss")
        rows.append([{"text": "text LM", "twist-dpo": "TWIST + DPO"}.get(name, MODEL_TITLES.get(name, name)),
                     f"{r['params']:,}" if r["params"] else "-",
                     format_duration(done["train_seconds"]) if "train_seconds" in done else "unfinished",
                     str(steps), f"{done['tokens']:,}" if "tokens" in done else "-",
                     f"{r['tok_per_s']:,.0f}" if r["tok_per_s"] else "-",
                     f"{val:.3f}" if isinstance(val, (int, float)) else "-"])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def steps_rows(data: dict) -> list[dict]:
    steps = data["state"].get("steps", {})
    return [{"name": k, "seconds": v.get("seconds", 0.0), "cpu_seconds": v.get("cpu_seconds", 0.0),
             "load_after": v.get("load_after"), "status": v.get("status"), "reused": v.get("reused", False),
             "commands": v.get("commands", []), "note": v.get("note", "")} for k, v in steps.items()]


def verdict(data: dict) -> list[str]:
    """One line per benchmark: which models beat chance (95% CI above 50%)."""
    lines = []
    for b in BENCHMARKS:
        above = [MODEL_TITLES[m] for m in MODELS if m in data["results"]
                 and data["results"][m].get(b, {}).get("ci95", [0, 0])[0] > CHANCE]
        lines.append(f"{BENCH_TITLES[b]}: " + (f"above chance (95% CI excludes 50%) for {', '.join(above)}"
                                                if above else "no model is above chance with 95% confidence"))
    return lines


def _data_lines(data: dict) -> list[str]:
    lines = []
    c, u, p = data["corpus"], data["units"], data["prefs"]
    if c:
        lines.append(f"text: {c['stories']:,} training stories ({c['distinct_sentences']:,} distinct sentences, "
                     f"{len(c['vocabulary'])}-word vocabulary, {len(c['topics'])} topics); held-out pairs "
                     + ", ".join(f"{k} {v}" for k, v in c["pairs"].items()) + f"; {c['prefs']} preference triples")
    if u:
        lines.append(f"speech units: {u['n_utterances']:,} utterances, {u['hours']:.2f} h of espeak-ng speech, "
                     f"{u['n_tokens']:,} units (k={u['n_units']}, {u['frame_rate']:g} Hz log-mel, "
                     f"dedup {'on' if u['dedup'] else 'off'})")
    if p:
        lines.append(f"DPO data: {p.get('pairs', '?')} spoken preference pairs")
    return lines


def _fmt_machine(m: dict) -> str:
    if not m:
        return "unknown machine"
    return (f"{m.get('cores')}-core {m.get('cpu')}" + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
            + f"; torch {m.get('torch')}, Python {m.get('python')}")


def budget_text(plan: dict) -> str:
    """The budgets as the plan set them: steps (reproducible) or the load-dependent wall-clock mode."""
    if plan.get("minutes") is not None:
        m = 60 * plan["minutes"]
        return (f"Budgets (wall clock, --minutes: the numbers depend on the machine's load): each speech LM "
                f"{format_duration(m)}, text LM {format_duration(m / 4)}, DPO {format_duration(m / 6)}.")
    return (f"Budgets (optimiser steps: the same numbers on any machine of the same kind, loaded or not): each "
            f"speech LM {plan.get('speech_steps', 0):,} steps, text LM {plan.get('text_steps', 0):,}, DPO "
            f"{plan.get('dpo_steps', 0):,}; precision {plan.get('precision')}.")


def _cpu(data: dict) -> str:
    """CPU time (user + system, the demo and its child processes) and the load average met along the way."""
    rows = steps_rows(data)
    cpu = sum(s.get("cpu_seconds", 0.0) for s in rows)
    loads = [s["load_after"][0] for s in rows if s.get("load_after")]
    start = (data["state"].get("machine") or {}).get("load_at_start")
    if start:
        loads.insert(0, start[0])
    text = f", CPU time {format_duration(cpu)} (user + system)" if cpu else ""
    if loads:
        text += f", 1-minute load average {min(loads):.1f}-{max(loads):.1f} (at step ends)"
    return text


def render_md(data: dict, loss_png: Path | None, acc_png: Path | None) -> str:
    st = data["state"]
    plan = st.get("plan", {})
    total = sum(s["seconds"] for s in steps_rows(data))
    md = ["# slam demo report", "",
          f"Machine: {_fmt_machine(st.get('machine', {}))}. Total step time {format_duration(total)}{_cpu(data)}. "
          f"{budget_text(plan)}", "",
          "## Accuracy on held-out pairs", "",
          "Accuracy in % with its 95% confidence interval; a pair counts as correct when the model gives the "
          "positive utterance the lower mean NLL per unit (the published protocol). `*` marks a CI that "
          "excludes chance (50%).", "", _md_table(accuracy_table(data)), ""]
    md += [f"- {line}" for line in verdict(data)] + [""]
    if len(data["seeds"]) > 1:
        md += [_md_table(fnd.seed_table(data, MODELS, MODEL_TITLES, BENCH_TITLES)), ""]
    md += ["## The paper's findings in miniature", "",
           "Each finding with this run's number; a difference is *reproduced* only when its 95% interval "
           "excludes 0 (and, with several seeds, every seed agrees).", "",
           _md_table([["finding", "this run", "verdict"]] + [list(r) for r in fnd.findings(data)]), ""]
    md += [f"- {x}" for x in (fnd.text_vs_speech(data), fnd.dpo_heldout(data)) if x] + [""]
    if acc_png:
        md += [f"![accuracy]({acc_png.name})", ""]
    md += ["<details><summary>Per group</summary>", "", _md_table(group_table(data)), "", "</details>", "",
           "## Training", "", _md_table(runs_table(data)), ""]
    if loss_png:
        md += [f"![loss curves]({loss_png.name})", ""]
    md += ["## Data", ""] + [f"- {x}" for x in _data_lines(data)] + [""]
    md += ["## Generated speech", "",
           "Held-out spoken prompts (espeak-ng), and each model's continuation (prompt + 150 sampled units, "
           "temperature 0.8, top-k 25) vocoded by the weight-free vocoder (k-means centroid -> log-mel -> "
           "Griffin-Lim: robotic by design; it closes the loop without downloading a vocoder).", ""]
    for pr in data["prompts"]:
        md.append(f"- prompt `{pr['id']}` ({pr['seconds']:.1f} s): \"{pr['text']}\" [{pr['file']}]({pr['file']})")
        for a in data["audio"]:
            if a["prompt"] == pr["id"]:
                md.append(f"  - {MODEL_TITLES[a['model']]}: [{a['file']}]({a['file']}) "
                          f"({a['continuation_seconds']:.1f} s continued)")
    md += ["", "## Steps, timings and the commands to repeat them", "",
           "Each step ran these commands (from the folder the demo was started in); run any of them by hand "
           "to repeat the step.", ""]
    for s in steps_rows(data):
        md.append(f"### {s['name']}: {format_duration(s['seconds'])}"
                  + (" (reused from an earlier run)" if s["reused"] else ""))
        if s["note"]:
            md.append(f"\n{s['note']}")
        if s["commands"]:
            md += ["", "```"] + [c["command"] + (f"    # {c['note']}" if c.get("note") else "")
                                 for c in s["commands"]] + ["```"]
        md.append("")
    return "\n".join(md)


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}img{max-width:100%}
.note{color:#555}audio{vertical-align:middle;height:2em}"""


def render_html(data: dict, out: Path, loss_png: Path | None, acc_png: Path | None) -> str:
    st = data["state"]
    plan = st.get("plan", {})
    total = sum(s["seconds"] for s in steps_rows(data))
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>slam demo report</title><style>{CSS}</style>"
         "</head><body><h1>slam demo report</h1>",
         f"<p>Machine: {html.escape(_fmt_machine(st.get('machine', {})))}. Total step time "
         f"{format_duration(total)}. {html.escape(budget_text(plan))}</p>",
         "<h2>Accuracy on held-out pairs</h2><p class='note'>Accuracy in % with its 95% confidence interval "
         "(mean NLL per unit, as published); * marks a CI that excludes chance (50%).</p>",
         _html_table(accuracy_table(data)), "<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in verdict(data)) + "</ul>"]
    if len(data["seeds"]) > 1:
        h.append(_html_table(fnd.seed_table(data, MODELS, MODEL_TITLES, BENCH_TITLES)))
    h += ["<h2>The paper's findings in miniature</h2><p class='note'>A difference is reproduced only when its 95% "
          "interval excludes 0 (and, with several seeds, every seed agrees).</p>",
          _html_table([["finding", "this run", "verdict"]] + [list(r) for r in fnd.findings(data)]),
          "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in (fnd.text_vs_speech(data), fnd.dpo_heldout(data))
                           if x) + "</ul>"]
    if acc_png:
        h.append(f"<img alt='accuracy' src='{_data_uri(acc_png, 'image/png')}'>")
    h += ["<details><summary>Per group</summary>", _html_table(group_table(data)), "</details>",
          "<h2>Training</h2>", _html_table(runs_table(data))]
    if loss_png:
        h.append(f"<img alt='loss curves' src='{_data_uri(loss_png, 'image/png')}'>")
    h += ["<h2>Data</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in _data_lines(data)) + "</ul>",
          "<h2>Generated speech</h2><p class='note'>Held-out spoken prompts and each model's continuation "
          "(150 sampled units, temperature 0.8, top-k 25), vocoded by the weight-free Griffin-Lim vocoder.</p>"]
    for pr in data["prompts"]:
        h.append(f"<h3>prompt {html.escape(pr['id'])}</h3><p>&ldquo;{html.escape(pr['text'])}&rdquo;</p><table>"
                 f"<tr><td>prompt ({pr['seconds']:.1f} s)</td><td><audio controls "
                 f"src='{_data_uri(out / pr['file'], 'audio/wav')}'></audio></td></tr>")
        for a in data["audio"]:
            if a["prompt"] == pr["id"]:
                h.append(f"<tr><td>{html.escape(MODEL_TITLES[a['model']])}</td><td><audio controls "
                         f"src='{_data_uri(out / a['file'], 'audio/wav')}'></audio></td></tr>")
        h.append("</table>")
    h.append("<h2>Steps, timings and commands</h2><p class='note'>Run any command by hand (from the folder "
             "the demo was started in) to repeat its step.</p>")
    for s in steps_rows(data):
        h.append(f"<h3>{html.escape(s['name'])}: {format_duration(s['seconds'])}"
                 + (" (reused)" if s["reused"] else "") + "</h3>")
        if s["note"]:
            h.append(f"<p class='note'>{html.escape(s['note'])}</p>")
        if s["commands"]:
            h.append("<pre>" + "\n".join(html.escape(c["command"]) for c in s["commands"]) + "</pre>")
    h.append("</body></html>")
    return "\n".join(h)


def write_report(out: str | Path) -> tuple[Path, Path]:
    """Write report.md, report.html, loss_curves.png and accuracy.png into the demo folder."""
    out = Path(out)
    data = collect(out)
    loss_png = plot_losses(data, out / "loss_curves.png")
    acc_png = plot_accuracy(data, out / "accuracy.png")
    md = out / "report.md"
    page = out / "report.html"
    atomic_write_text(md, render_md(data, loss_png, acc_png))
    atomic_write_text(page, render_html(data, out, loss_png, acc_png))
    for f in (md, page):  # atomic writes come from mkstemp (0600): a report is meant to be shared
        f.chmod(0o644)
    return md, page


def summary_paragraph(out: str | Path, state: dict, wall: float) -> str:
    data = collect(out)
    res = data["results"]
    parts = []
    for m in MODELS:
        if m in res:
            parts.append(f"{MODEL_TITLES[m]}: " + ", ".join(f"{b} {_acc(res[m].get(b))}" for b in BENCHMARKS))
    reused = [k for k, v in state.get("steps", {}).items() if v.get("reused")]
    seeds = data["seeds"]
    first, spread = "", ""
    if len(seeds) > 1:  # the first seed's CIs alone would read as the result: name them, the spread follows
        first = f" (seed {next(iter(seeds))})"
        table = fnd.seed_table(data, MODELS, MODEL_TITLES, {b: b for b in fnd.BENCH})[1:-1]  # models only
        rows = [f"{title}: " + ", ".join(f"{b} {v}" for b, v in zip(fnd.BENCH, values)) for title, *values in table]
        spread = f". Mean ± sd over {len(seeds)} seeds ({', '.join(map(str, seeds))}): " + "; ".join(rows)
    return (f"slam demo: done in {format_duration(wall)} on {_fmt_machine(state.get('machine', {}))}"
            + (f" (reused steps: {', '.join(reused)})" if reused else "")
            + f". Accuracy % [95% CI]{first}, chance 50: " + ("; ".join(parts) or "no model evaluated") + spread
            + f". Report: {Path(out) / 'report.html'} (and report.md, loss_curves.png, accuracy.png, generated "
            f"audio in {Path(out) / 'generate'}).")
