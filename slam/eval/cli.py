"""`slam eval`: every requested metric of one model in one run, as results.json and a table.

    slam eval MODEL_DIR --bench sblimp=zr2021/syntactic/dev --bench ssc=sSC --bench tsc=tSC \\
              [--genppl PROMPTS_DIR] [--out results.json] [--score mean|sum]

--bench NAME=PATH (repeatable): a ZeroSpeech lexical/syntactic split folder, a Spoken StoryCloze folder or
a pairs.jsonl (see slam.eval.pairs). --genppl PROMPTS_DIR: GenPPL + auto-BLEU from the first --n-prompts
files cut to --prompt-seconds (see slam.eval.genppl); the transcripts go to OUT.genppl.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from slam.errors import SlamError
from slam.utils import atomic_write_json, hash_files, provenance


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="slam model folder (or a published slamkit folder)")
    p.add_argument("--bench", action="append", default=[], metavar="NAME=PATH",
                   help="a pairs benchmark (repeatable); NAME defaults to the folder name")
    p.add_argument("--genppl", metavar="PROMPTS_DIR", default=None, help="prompt audio folder for GenPPL")
    p.add_argument("--cross-modal", action="append", default=[], metavar="NAME=PAIRS_JSONL",
                   help="interleaved models: story cloze across modalities from a TEXT pairs.jsonl (slam corpus "
                        "bench/story or bench/topic): NAME-t2s (text prompt -> speech ending) and NAME-s2t "
                        "(speech prompt -> text ending); prompts and endings are spoken with espeak-ng")
    p.add_argument("--cross-modal-work", default=None, metavar="DIR",
                   help="where the cross-modal audio goes (default: OUT's folder/crossmodal-NAME; resumable)")
    p.add_argument("--cross-modal-n", type=int, default=None, help="use only the first N cross-modal pairs")
    p.add_argument("--out", default=None, help="results.json (default: MODEL_DIR/eval-results.json)")
    p.add_argument("--score", choices=["mean", "sum"], default="mean",
                   help="utterance score: mean token NLL (published) or the sum")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per scoring forward (default 16384 on a GPU, 2048 on a CPU; 0 = one at a time)")
    p.add_argument("--cache-dir", default=None, help="units cache (default ~/.cache/slam/units)")
    p.add_argument("--no-cache", action="store_true", help="tokenise every file again, write no cache")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer spec for a model whose slam.json names none (e.g. a published slamkit model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g = p.add_argument_group("GenPPL")
    g.add_argument("--n-prompts", type=int, default=1000)
    g.add_argument("--prompt-seconds", type=float, default=3.0)
    g.add_argument("--max-new-tokens", type=int, default=150)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=25)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--asr", default=None, help="HF Whisper id or folder (default openai/whisper-large-v3-turbo)")
    g.add_argument("--text-lm", default=None, help="HF causal LM id or folder (default meta-llama/Llama-3.2-1B)")
    g.add_argument("--vocoder", default=None, help="hifigan | melinv | HiFi-GAN .pt or folder (default: by tokenizer)")
    g.add_argument("--gen-batch-size", type=int, default=32)


def model_hash(folder: str | Path) -> str | None:
    """Over the weights, config.json and slam.json (not over eval outputs written into the folder)."""
    folder = Path(folder)
    if not folder.is_dir():  # a hub id: its files live in the HF cache
        return None
    files = [f for f in folder.iterdir() if f.suffix == ".safetensors" or f.name in ("config.json", "slam.json")]
    return hash_files(files, root=folder)


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
            for g, gr in r.get("groups", {}).items():
                rows.append((f"  {g}", _fmt(gr["value"]) + " %", f"[{_fmt(gr['ci95'][0])}, {_fmt(gr['ci95'][1])}]",
                             str(gr["n"]), ""))
        else:
            rows.append((name, _fmt(r["value"]), ci, str(r["n"]),
                         f"auto-BLEU {_fmt(r['auto_bleu'], 3)}, {r['n_empty']} empty"))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from slam.eval.pairs import default_cache_dir, evaluate_pairs, read_benchmark
    from slam.generate import load_for_inference, load_model_tokenizer

    if not args.bench and not args.genppl and not args.cross_modal:
        raise SlamError("nothing to evaluate: give --bench NAME=PATH, --genppl PROMPTS_DIR and/or --cross-modal "
                        "NAME=PAIRS_JSONL")
    t0 = time.perf_counter()
    benches = [parse_bench(b) for b in args.bench]
    xmodal = [parse_bench(b) for b in args.cross_modal]
    for _, path in xmodal:
        if not path.is_file():
            raise SlamError(f"--cross-modal {path}: not a file (expected a text pairs.jsonl)")
    names = [n for n, _ in benches] + (["genppl"] if args.genppl else []) + \
        [f"{n}-{d}" for n, _ in xmodal for d in ("t2s", "s2t")]
    if len(set(names)) != len(names):
        raise SlamError(f"benchmark names must be unique: {names}")
    read = [(n, read_benchmark(p)) for n, p in benches]  # layout errors before any model loading
    model, info = load_for_inference(args.model_dir, device=args.device)
    tokenizer = load_model_tokenizer(info, args.model_dir, args.tokenizer)
    cache_dir = None if args.no_cache else (args.cache_dir or default_cache_dir())
    metrics: dict[str, dict[str, Any]] = {}
    for name, bench in read:
        print(f"[{name}] {bench.layout}: {len(bench.pairs)} pairs, {len(bench.files())} files from {bench.path}")
        metrics[name] = evaluate_pairs(model, info, bench, tokenizer=tokenizer, score=args.score,
                                       batch_tokens=args.batch_tokens, cache_dir=cache_dir)
    out = Path(args.out) if args.out else Path(args.model_dir) / "eval-results.json"
    if xmodal:
        from slam.interleave import cross_modal_cloze, model_text_tokenizer

        text_tok = model_text_tokenizer(info, args.model_dir)
        for name, path in xmodal:
            work = Path(args.cross_modal_work) if args.cross_modal_work else out.parent / f"crossmodal-{name}"
            print(f"[{name}] cross-modal story cloze from {path} (audio in {work})")
            r = cross_modal_cloze(model, info, text_tok, tokenizer, path, work, n=args.cross_modal_n,
                                  cache_dir=cache_dir, batch_tokens=args.batch_tokens, score=args.score)
            metrics[f"{name}-t2s"], metrics[f"{name}-s2t"] = r["t2s"], r["s2t"]
    if args.genppl:
        from slam.eval.genppl import DEFAULT_ASR, DEFAULT_TEXT_LM, TextLM, WhisperASR, evaluate_genppl
        from slam.vocoder import load_vocoder

        vocoder = load_vocoder(info, args.model_dir, args.vocoder, device=args.device)
        asr = WhisperASR(args.asr or DEFAULT_ASR, device=args.device)
        text_lm = TextLM(args.text_lm or DEFAULT_TEXT_LM, device=args.device)
        r = evaluate_genppl(model, info, args.genppl, tokenizer=tokenizer, vocoder=vocoder, asr=asr, text_lm=text_lm,
                            n_prompts=args.n_prompts, prompt_seconds=args.prompt_seconds,
                            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            repetition_penalty=args.repetition_penalty, seed=args.seed,
                            batch_size=args.gen_batch_size,
                            dedup=bool(info.tokenizer.get("dedup", True)))
        samples = r.pop("samples")
        transcripts = out.with_suffix(".genppl.jsonl")
        transcripts.parent.mkdir(parents=True, exist_ok=True)
        transcripts.write_text("".join(json.dumps(s) + "\n" for s in samples))
        r["transcripts"] = transcripts.name
        metrics["genppl"] = r
    results = {"model": {"path": str(Path(args.model_dir).resolve()), "hash": model_hash(args.model_dir),
                         "tokenizer_hash": tokenizer.hash, "n_units": info.n_units},
               "metrics": metrics, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "provenance": provenance()}
    atomic_write_json(out, results)
    print(table(metrics))
    parts = [f"{n} {_fmt(r['value'])}{' %' if r['metric'] == 'accuracy' else ''} (n={r['n']})"
             for n, r in metrics.items()]
    print(f"Evaluated {args.model_dir} (model hash {(results['model']['hash'] or 'n/a')[:12]}) on {len(metrics)} metric(s) "
          f"in {time.perf_counter() - t0:.1f} s: {', '.join(parts)}. Results in {out}.")
    return 0
