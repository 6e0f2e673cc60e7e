"""Every requested metric of one model in one run, as results.json and a table (the engine of `slam eval`;
its options and the benchmark layouts are described in slam/cli/eval.py and docs/evaluation.md).

    results = evaluate_model("runs/slam/final", bench=["sblimp=zr2021/syntactic/dev", "salmon=salmon/"],
                             genppl="sSC/", out="results.json")
    results["metrics"]["sblimp"]["value"], results["metrics"]["sblimp"]["ci95"]

Pair benchmarks are read first (a layout error costs no model loading), then the model and its speech
tokenizer once for every metric.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from slam.errors import SlamError
from slam.eval.cross_modal import DIRECTIONS, cross_modal_cloze, cross_modal_square, is_cross_modal_folder
from slam.eval.genppl import build_genppl_parts, evaluate_genppl
from slam.eval.judge import LocalJudge, evaluate_judge, load_template
from slam.eval.layouts import expand_bench
from slam.eval.pairs import default_cache_dir, evaluate_pairs
from slam.lock import lock_beside
from slam.model_folder import load_for_inference, load_model_tokenizer
from slam.tracking import log_eval
from slam.text import model_text_tokenizer
from slam.utils import atomic_write_json, hash_files, provenance
from slam.vocoder import load_vocoder


def model_hash(folder: str | Path) -> str | None:
    """Over the weights, config.json and slam.json (not over eval outputs written into the folder)."""
    folder = Path(folder)
    if not folder.is_dir():  # a hub id: its files live in the HF cache
        return None
    files = [f for f in folder.iterdir() if f.suffix == ".safetensors" or f.name in ("config.json", "slam.json")]
    return hash_files(files, root=folder)


def default_results_name(model_dir: str | Path) -> str:
    """runs/slam/final -> slam-final, slprl/slam -> slprl-slam: the model's last two path parts."""
    p = Path(str(model_dir))
    parts = (p.resolve().parts if p.exists() else p.parts)[-2:]
    return "-".join(x.strip("/") for x in parts if x.strip("/")) or "model"


def parse_bench(spec: str) -> tuple[str, Path]:
    name, eq, path = spec.partition("=")
    if not eq:
        p = Path(spec)
        return (p.parent.name + "-" + p.name if p.name in ("dev", "test") else p.stem), p
    if not name or not path:
        raise SlamError(f"--bench {spec!r}: expected NAME=PATH")
    return name, Path(path)


def _fmt(x: float, digits: int = 2) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(metrics: dict[str, dict[str, Any]]) -> str:
    rows = [("metric", "value", "95% CI", "n", "notes")]
    for name, r in metrics.items():
        ci = f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"
        if r["metric"] == "accuracy":
            rows.append((name, _fmt(r["value"]) + " %", ci, str(r["n"]), f"{r['layout']}, score {r['score']}"))
            if "invocab" in r:  # sWUGGY: the leaderboard's in-vocabulary accuracy beside "all"
                iv = r["invocab"]
                rows.append(("  in-vocab", _fmt(iv["value"]) + " %", f"[{_fmt(iv['ci95'][0])}, {_fmt(iv['ci95'][1])}]",
                             str(iv["n"]), "words with frequency >= 1"))
            for g, gr in r.get("groups", {}).items():
                rows.append((f"  {g}", _fmt(gr["value"]) + " %", f"[{_fmt(gr['ci95'][0])}, {_fmt(gr['ci95'][1])}]",
                             str(gr["n"]), ""))
        elif r["metric"] == "judge":
            rows.append((name, _fmt(r["value"]), ci, str(r["n"]),
                         f"{r['judge']}, scale {r['scale'][0]}-{r['scale'][1]}, {r['n_unparsed']} unparsed"))
        else:
            rows.append((name, _fmt(r["value"]), ci, str(r["n"]),
                         f"auto-BLEU {_fmt(r['auto_bleu'], 3)}, {r['n_empty']} empty, {r['protocol']['name']} "
                         f"protocol"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def evaluate_model(model_dir: str | Path, *, bench: Sequence[str] = (), genppl: str | None = None,
                   cross_modal: Sequence[str] = (), cross_modal_work: str | None = None,
                   cross_modal_n: int | None = None, out: str | Path | None = None, score: str = "mean",
                   batch_tokens: int | None = None, cache_dir: str | None = None, no_cache: bool = False,
                   tokenizer: str | None = None, device: str | None = None, n_prompts: int = 1000,
                   prompt_seconds: float = 3.0, max_new_tokens: int = 150, temperature: float = 0.8,
                   top_k: int = 25, repetition_penalty: float | None = None, seed: int = 0, asr: str | None = None,
                   text_lm: str | None = None, vocoder: str | None = None, gen_batch_size: int = 32,
                   genppl_protocol: str = "paper", prompt_cut: str = "seconds", alignment_dir: str | None = None,
                   min_file_seconds: float | None = None, judge: str | None = None,
                   judge_template: str | None = None, judge_prompts: str | None = None,
                   judge_n: int | None = None, cross_modal_span: str = "all", wandb: str | None = None) -> dict:
    """Every requested metric of one model (the options of `slam eval`, one keyword each); writes
    results.json (`out`), prints a table and a summary, and returns the results."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not bench and not genppl and not cross_modal and not judge:
        raise SlamError("nothing to evaluate: give --bench NAME=PATH, --genppl PROMPTS_DIR and/or --cross-modal "
                        "NAME=PAIRS_JSONL")
    t0 = time.perf_counter()
    benches = [parse_bench(b) for b in bench]
    xmodal = [parse_bench(b) for b in cross_modal]
    for _, path in xmodal:
        if not path.is_file() and not is_cross_modal_folder(path):
            raise SlamError(f"--cross-modal {path}: neither a text pairs.jsonl nor a folder in the published "
                            f"cross-modal layout (<key>_correct/_incorrect/_mutual .wav + .txt)")
    if judge and not (judge_prompts or genppl):
        raise SlamError("--judge needs prompts: --judge-prompts DIR (or the --genppl folder)")
    judge_t = load_template(judge_template) if judge else None
    read = [nb for n, p in benches for nb in expand_bench(n, p)]  # layout errors before any model loading
    names = [n for n, _ in read] + (["genppl"] if genppl else []) + \
        [f"{n}-{d}" for n, p in xmodal for d in (DIRECTIONS if p.is_dir() else ("t2s", "s2t"))] + \
        (["judge"] if judge else [])
    if len(set(names)) != len(names):
        raise SlamError(f"benchmark names must be unique: {names}")
    model, info = load_for_inference(model_dir, device=device)
    tokenizer = load_model_tokenizer(info, model_dir, tokenizer)
    cache_dir = None if no_cache else (cache_dir or default_cache_dir())
    metrics: dict[str, dict[str, Any]] = {}
    for name, bench in read:
        print(f"[{name}] {bench.layout}: {len(bench.pairs)} pairs, {len(bench.files())} files from {bench.path}")
        metrics[name] = evaluate_pairs(model, info, bench, tokenizer=tokenizer, score=score,
                                       batch_tokens=batch_tokens, cache_dir=cache_dir)
    # by default never into the model's folder (a hub download's cache, a published model): results go to
    # ./eval-results/<model>.json; `--out MODEL_DIR/results.json` puts them beside the model when asked
    out = Path(out) if out else Path("eval-results") / f"{default_results_name(model_dir)}.json"
    with lock_beside(out, "eval"):  # one writer per results file (and the files named after it)
        if xmodal:
            text_tok = model_text_tokenizer(info, model_dir)
            for name, path in xmodal:
                work = Path(cross_modal_work) if cross_modal_work else out.parent / f"crossmodal-{name}"
                if path.is_dir():  # the published layout: all four directions from its own recordings
                    print(f"[{name}] cross-modal story cloze (t2t, t2s, s2t, s2s) from {path}")
                    r = cross_modal_square(model, info, text_tok, tokenizer, path, n=cross_modal_n, cache_dir=cache_dir,
                                           batch_tokens=batch_tokens, score=score, span=cross_modal_span)
                    for d in DIRECTIONS:
                        metrics[f"{name}-{d}"] = r[d]
                    continue
                print(f"[{name}] cross-modal story cloze from {path} (audio in {work})")
                r = cross_modal_cloze(model, info, text_tok, tokenizer, path, work, n=cross_modal_n,
                                      cache_dir=cache_dir, batch_tokens=batch_tokens, score=score)
                metrics[f"{name}-t2s"], metrics[f"{name}-s2t"] = r["t2s"], r["s2t"]
        if genppl:
            vocoder = load_vocoder(info, model_dir, vocoder, device=device)
            asr_model, text_model = build_genppl_parts(genppl_protocol, asr, text_lm, device=device)
            r = evaluate_genppl(model, info, genppl, tokenizer=tokenizer, vocoder=vocoder, asr=asr_model,
                                text_lm=text_model, protocol=genppl_protocol, prompt_cut=prompt_cut,
                                alignment_dir=alignment_dir, min_file_seconds=min_file_seconds,
                                audio_dir=out.with_suffix(".genppl"), n_prompts=n_prompts, prompt_seconds=prompt_seconds,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                repetition_penalty=repetition_penalty, seed=seed,
                                batch_size=gen_batch_size,
                                dedup=bool(info.tokenizer.get("dedup", True)))
            samples = r.pop("samples")
            transcripts = out.with_suffix(".genppl.jsonl")
            transcripts.parent.mkdir(parents=True, exist_ok=True)
            transcripts.write_text("".join(json.dumps(s) + "\n" for s in samples))
            r["transcripts"] = transcripts.name
            r["audio"] = out.with_suffix(".genppl").name + "/"
            metrics["genppl"] = r
        if judge:
            voc = vocoder if genppl else load_vocoder(info, model_dir, vocoder, device=device)
            asr_j = asr_model if genppl else build_genppl_parts(genppl_protocol, asr, None, device=device, text_lm_too=False)[0]
            jr = evaluate_judge(model, info, judge_prompts or genppl, tokenizer=tokenizer, vocoder=voc, asr=asr_j,
                                judge=LocalJudge(judge, judge_t, device=device, seed=seed), protocol=genppl_protocol,
                                n_prompts=judge_n, alignment_dir=alignment_dir, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                                batch_size=gen_batch_size, dedup=bool(info.tokenizer.get("dedup", True)),
                                audio_dir=out.with_suffix(".judge"))
            samples = jr.pop("samples")
            answers = out.with_suffix(".judge.jsonl")
            answers.parent.mkdir(parents=True, exist_ok=True)
            answers.write_text("".join(json.dumps(s) + "\n" for s in samples))
            jr["answers"], jr["audio"] = answers.name, out.with_suffix(".judge").name + "/"
            metrics["judge"] = jr
        results = {"model": {"path": str(Path(model_dir).resolve()), "hash": model_hash(model_dir),
                             "tokenizer_hash": tokenizer.hash, "n_units": info.n_units},
                   "metrics": metrics, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "provenance": provenance()}
        atomic_write_json(out, results)
        if wandb:  # optional extra: metrics with their CIs and the generated audio, beside TensorBoard-free eval
            log_eval(wandb, results, out, [out.with_suffix(".genppl"), out.with_suffix(".judge")])
        print(table(metrics))
        parts = [f"{n} {_fmt(r['value'])}{' %' if r['metric'] == 'accuracy' else ''} (n={r['n']})"
                 for n, r in metrics.items()]
        print(f"Evaluated {model_dir} (model hash {(results['model']['hash'] or 'n/a')[:12]}) on {len(metrics)} metric(s) "
              f"in {time.perf_counter() - t0:.1f} s: {', '.join(parts)}. Results in {out}.")
        return results
