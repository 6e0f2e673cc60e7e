"""LLM-as-judge for generated continuations (`slam eval MODEL --judge JUDGE_LM [--judge-template FILE]`).

As slamkit's `llm_as_judge`:

    prompts:  every audio file of the folder at least `min_file_seconds` long (6 s), cut at the aligned word
              end nearest `prompt_seconds` (3 s; `<stem>.json` word alignments) or plainly at 3 s
    sample:   a continuation (150 units, temperature 0.8, top-k 25; eos as the GenPPL protocol says)
    ASR:      Whisper transcribes the prompt audio and the vocoded continuation alone (durations predicted)
    judge:    the template with both transcripts filled in -> any local causal LM (hub id or folder) writes
              an answer; the score is the first match of `answer_regex` in what it wrote (`\\boxed{N}`)
    result:   mean score over the answers that hold a score inside `scale`, with a 95% CI; answers without
              one are counted (`n_unparsed`), not scored, as slamkit drops them

The template file (JSON) holds the prompt, the score scale and the decoding: `template` with the two fields
`prompt_field` / `continuation_field`, `scale` [lo, hi], `answer_regex` (one group: the integer),
`max_new_tokens`, `temperature` (0 = greedy), `chat` (wrap in the judge's chat template; slamkit's local judge
does not), and optionally the prompt settings `prompt_seconds`, `prompt_cut`, `min_file_seconds`. The default,
judges/slamkit.json, is slamkit's instruction (relevance and likelihood of the continuation, 1 to 5).
Unlike slamkit (which searches the whole decoded sequence, prompt included), only the judge's own words are
searched, so a transcript that happens to contain "\\boxed{5}" cannot score itself.

CI: mean +- 1.96 sd / sqrt(n). When every score is equal (sd 0) that interval would be a point; the CI is
then the Wilson interval of the mean rescaled to [0, 1] (the widest variance a score in the scale can have
at that mean), which stays a real interval at the ends of the scale.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from slam.errors import SlamError
from slam.eval.genppl import Protocol, cut_prompts, get_protocol, prompt_files
from slam.eval.pairs import wilson
from slam.generate import sample_units
from slam.tokens import SlamInfo
from slam.units.dataset import dedup as dedup_frames
from slam.vocoder.hifigan import require_published_units

DEFAULT_TEMPLATE = Path(__file__).parent / "judges" / "slamkit.json"
REQUIRED = ("template", "prompt_field", "continuation_field", "scale", "answer_regex")


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """The judge template file (JSON), checked: both fields in the template, a [lo, hi] integer scale, a
    regex with one group."""
    path = Path(path) if path else DEFAULT_TEMPLATE
    try:
        t = json.loads(path.read_text())
    except FileNotFoundError:
        raise SlamError(f"judge template {str(path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise SlamError(f"judge template {path}: not valid JSON ({e})") from None
    missing = [k for k in REQUIRED if k not in t]
    if missing:
        raise SlamError(f"judge template {path}: missing {', '.join(missing)}")
    for field in ("prompt_field", "continuation_field"):
        if t[field] not in t["template"]:
            raise SlamError(f"judge template {path}: `template` does not contain {field} {t[field]!r}")
    scale = t["scale"]
    if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(x, int) for x in scale)
            or scale[0] >= scale[1]):
        raise SlamError(f"judge template {path}: scale must be [lo, hi] integers with lo < hi, got {scale!r}")
    try:
        rx = re.compile(t["answer_regex"])
    except re.error as e:
        raise SlamError(f"judge template {path}: answer_regex does not compile ({e})") from None
    if rx.groups != 1:
        raise SlamError(f"judge template {path}: answer_regex needs exactly one group (the score)")
    t.setdefault("max_new_tokens", 512)
    t.setdefault("temperature", 0.8)
    t.setdefault("chat", False)
    t["source"] = str(path)
    return t


def fill(template: dict[str, Any], prompt_text: str, continuation_text: str) -> str:
    """The prompt field first, then the continuation field (slamkit's order of replacement)."""
    return (template["template"].replace(template["prompt_field"], prompt_text)
            .replace(template["continuation_field"], continuation_text))


def parse_score(answer: str, template: dict[str, Any]) -> int | None:
    """The first regex match in the answer, if it is an integer inside the scale; else None."""
    m = re.search(template["answer_regex"], answer)
    if not m:
        return None
    try:
        v = int(m.group(1))
    except ValueError:
        return None
    lo, hi = template["scale"]
    return v if lo <= v <= hi else None


def score_stats(scores: Sequence[int | None], scale: Sequence[int]) -> dict[str, Any]:
    """Mean score with a 95% CI over the parsed scores; counts and a histogram over the scale."""
    lo, hi = int(scale[0]), int(scale[1])
    x = np.asarray([s for s in scores if s is not None], dtype=np.float64)
    hist = {str(v): int((x == v).sum()) for v in range(lo, hi + 1)}
    out: dict[str, Any] = {"n": int(x.size), "n_unparsed": int(len(scores) - x.size), "histogram": hist,
                           "scale": [lo, hi]}
    if x.size == 0:
        return out | {"value": float("nan"), "ci95": [float("nan"), float("nan")], "ci_method": "none"}
    m = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if sd > 0:
        half = 1.96 * sd / math.sqrt(x.size)
        ci, method = [max(lo, m - half), min(hi, m + half)], "normal"
    else:  # all scores equal: the Wilson interval of the rescaled mean
        a, b = wilson((m - lo) / (hi - lo), int(x.size))
        ci, method = [lo + a * (hi - lo), lo + b * (hi - lo)], "wilson"
    return out | {"value": m, "ci95": ci, "ci_method": method}


class LocalJudge:
    """Any local causal LM (hub id or folder) as the judge: batched, left-padded, seeded decoding."""

    def __init__(self, name: str, template: dict[str, Any], device: str = "cpu", seed: int = 0,
                 batch_size: int = 8):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name).to(device).eval()
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SlamError(f"cannot load the judge {name!r} ({type(e).__name__}: {first}); pass --judge with a "
                            f"local folder or a hub id that is available here") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        if template.get("chat") and not getattr(self.tokenizer, "chat_template", None):
            raise SlamError(f"the judge template asks for a chat template, but {name} has none")
        self.name, self.template, self.device, self.seed, self.batch_size = name, template, device, seed, batch_size

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], progress: bool = False) -> list[str]:
        t = self.template
        answers: list[str] = []
        for b in tqdm(range(0, len(texts), self.batch_size), desc="judging", disable=not progress):
            batch = list(texts[b:b + self.batch_size])
            if t.get("chat"):
                batch = [self.tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                                            add_generation_prompt=True) for x in batch]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            torch.manual_seed(self.seed + b)  # each batch its own seed: a rerun gives the same answers
            temp = float(t.get("temperature", 0.8))
            kw = {"do_sample": True, "temperature": temp} if temp > 0 else {"do_sample": False}
            out = self.model.generate(**enc, max_new_tokens=int(t.get("max_new_tokens", 512)),
                                      pad_token_id=self.tokenizer.pad_token_id, **kw)
            answers.extend(self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        return answers


def evaluate_judge(model: Any, info: SlamInfo, prompts: str | Path, *, tokenizer: Any, vocoder: Any,
                   asr: Callable[[Sequence[np.ndarray]], list[str]], judge: LocalJudge,
                   protocol: str | Protocol = "paper", n_prompts: int | None = None,
                   prompt_seconds: float | None = None, prompt_cut: str | None = None,
                   alignment_dir: str | Path | None = None, min_file_seconds: float | None = None,
                   max_new_tokens: int = 150, temperature: float = 0.8, top_k: int | None = 25,
                   repetition_penalty: float | None = None, seed: int = 0, batch_size: int = 32,
                   dedup: bool = True, audio_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Judge scores of `model`'s continuations; the prompt settings default to the template's (slamkit:
    all files >= 6 s, cut at the aligned word end nearest 3 s). Every prompt, answer and score is in
    `samples`."""
    t = judge.template
    proto = get_protocol(protocol)
    require_published_units(vocoder, tokenizer)
    prompt_seconds = float(prompt_seconds if prompt_seconds is not None else t.get("prompt_seconds", 3.0))
    prompt_cut = prompt_cut or t.get("prompt_cut", "seconds")
    if min_file_seconds is None:
        min_file_seconds = t.get("min_file_seconds")
    t0 = time.perf_counter()
    files = prompt_files(prompts, n_prompts or 10**9, min_file_seconds)
    wavs = cut_prompts(files, prompt_seconds, prompt_cut, alignment_dir)
    units = []
    for frames in (tokenizer.encode_batch(wavs) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, wavs)):
        frames = np.asarray(frames, dtype=np.int64)
        units.append(dedup_frames(frames)[0] if dedup else frames)
    new = sample_units(model, info, units, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size, progress=progress,
                       stop_at_eos=proto.sample_eos)
    # the continuation alone (slamkit: remove_prompt=True), every duration predicted
    conts = [vocoder.vocode(c[0], np.zeros(len(c[0]), np.int64)) if len(c[0]) else np.zeros(0, np.float32)
             for c in new]
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        audio_dir.mkdir(parents=True, exist_ok=True)
        for i, w in enumerate(conts):
            sf.write(audio_dir / f"{i:04d}.wav", w, getattr(vocoder, "sample_rate", 16000))

    def transcribe(ws: list[np.ndarray]) -> list[str]:
        out: list[str] = []
        for b in range(0, len(ws), batch_size):
            chunk = ws[b:b + batch_size]
            heard = iter(asr([w for w in chunk if len(w)]) if any(len(w) for w in chunk) else [])
            out.extend(next(heard) if len(w) else "" for w in chunk)  # an empty utterance reads as ""
        return out

    prompt_texts, cont_texts = transcribe(wavs), transcribe(conts)
    filled = [fill(t, p, c) for p, c in zip(prompt_texts, cont_texts)]
    answers = judge(filled, progress=progress)
    scores = [parse_score(a, t) for a in answers]
    samples = [{"prompt": str(f), "prompt_seconds": len(w) / 16000, "units": c[0].tolist(), "prompt_text": p,
                "text": ct, "answer": a, "score": s,
                **({"audio": f"{audio_dir.name}/{i:04d}.wav"} if audio_dir is not None else {})}
               for i, (f, w, c, p, ct, a, s) in enumerate(zip(files, wavs, new, prompt_texts, cont_texts, answers,
                                                              scores))]
    return {"metric": "judge", **score_stats(scores, t["scale"]), "n_prompts": len(files), "judge": judge.name,
            "template": t["source"], "template_name": t.get("name"), "protocol": proto.name,
            "asr": getattr(asr, "name", type(asr).__name__), "prompt_seconds": prompt_seconds,
            "prompt_cut": prompt_cut, "min_file_seconds": min_file_seconds,
            "decoding": {"max_new_tokens": t.get("max_new_tokens"), "temperature": t.get("temperature"),
                         "chat": bool(t.get("chat")), "seed": judge.seed},
            "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                         "repetition_penalty": repetition_penalty, "seed": seed},
            "seconds": time.perf_counter() - t0, "samples": samples}
