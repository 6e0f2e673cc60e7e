"""`slam generate`: continue a spoken prompt and vocode the result.

    slam generate MODEL_DIR --prompt AUDIO --out OUT.wav [--temperature 0.8 --top-k 25 --max-new-tokens 150
                  --repetition-penalty R --seed S --num-samples N --vocoder NAME]

prompt audio -> units (the model's own tokenizer, deduplicated as in training) -> `<s> units` ->
sampled continuation (published defaults: temperature 0.8, top-k 25, 150 units; only unit ids can be
drawn, so pad/bos/eos and any text or marker ids are suppressed) -> prompt + continuation units ->
vocoder (by the tokenizer kind in slam.json, or --vocoder) -> OUT.wav, plus OUT.units.jsonl beside it.

The sampler here (`sample_units`) is also what GenPPL in `slam eval` uses. It is batched over prompts and
samples with left padding and a KV cache, and each output row draws from its own generator seeded by
(seed, prompt index, sample index): a row's result does not depend on what else shares its batch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from slam.audio import load_audio
from slam.errors import SlamError
from slam.lock import lock_beside
from slam.model_folder import audio_to_units, load_for_inference, load_model_tokenizer
from slam.text import model_text_tokenizer
from slam.tokens import SlamInfo, require_interleaved, text_targets
from slam.units.dataset import iter_rows, read_meta
from slam.vocoder import load_vocoder
from slam.vocoder.hifigan import require_published_units



# --- sampling ----------------------------------------------------------------------------------------------
def row_generator(seed: int, prompt_index: int, sample_index: int, device: str | torch.device) -> torch.Generator:
    state = np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(2, dtype=np.uint64)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0] >> np.uint64(1)))
    return g


def next_unit_logits(logits: torch.Tensor, seen: torch.Tensor, temperature: float, top_k: int | None,
                     repetition_penalty: float | None, top_p: float | None = None) -> torch.Tensor:
    """Unit logits [B, K] -> the logits actually sampled from (-inf outside top-k and the top-p nucleus).

    Repetition penalty as in CTRL / HF: a unit already in the prompt or the continuation has its logit
    divided by R when positive, multiplied by R when negative. Then temperature, then top-k, then top-p
    (nucleus sampling, Holtzman et al. 2020, as HF's TopPLogitsWarper: keep the most likely ids until their
    probability reaches p; the most likely id is always kept).
    """
    logits = logits.float()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        pen = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, pen, logits)
    if temperature > 0:
        logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        before = probs.cumsum(-1) - probs  # the mass of the ids ranked above each id
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return logits


@torch.inference_mode()
def sample_units(model: Any, info: SlamInfo, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 150,
                 temperature: float = 0.8, top_k: int | None = 25, repetition_penalty: float | None = None,
                 seed: int = 0, num_samples: int = 1, batch_size: int = 32, top_p: float | None = None,
                 progress: bool = False, prefixes: Sequence[Sequence[int]] | None = None,
                 stop_at_eos: bool = False, candidates: Sequence[int] | None = None) -> list[list[np.ndarray]]:
    """Continue each prompt (units 0..K-1) `num_samples` times; returns [prompt][sample] -> new units.

    temperature 0 = greedy. By default only unit ids are ever drawn (the special ids of `info.special_ids`
    are out of the sampled slice), so every continuation has exactly max_new_tokens units. `prefixes[i]`
    (model ids) replaces prompt i's opening `<s>` (e.g. an interleaved text prompt `<s> <text> tokens
    <speech>`).

    stop_at_eos=True samples as slamkit's `generate` does (HF generate over the whole vocabulary, no ids
    banned for a unit model): a speech-only model draws from every id (pad, `<s>`, units), an interleaved
    one from its units and eos. Drawing eos ends that row (so it may hold fewer units, even none); a drawn
    pad stays in the context and is dropped from the output, as slamkit's decode drops it. Top-k and the
    repetition penalty then act over those ids too.

    candidates: draw from exactly these model ids instead (e.g. an interleaved model's text ids for a text
    continuation); the rows are then returned as model ids, each ending before the first eos drawn.
    """
    device = next(model.parameters()).device
    K, off = info.n_units, info.unit_offset
    # candidate ids, units contiguous from column u0: the sampled slice of the logits
    if candidates is not None:
        cand, u0 = torch.as_tensor(np.asarray(candidates, np.int64)), 0
        stop_at_eos = True
    elif not stop_at_eos:
        cand, u0 = torch.arange(off, off + K), 0
    elif info.speech_token_id is None:
        cand, u0 = torch.arange(0, max(info.vocab_size, off + K)), off
    else:
        cand, u0 = torch.as_tensor(np.r_[np.arange(off, off + K), info.eos_id]), 0
    cand = cand.to(device)
    contiguous = bool((cand[1:] - cand[:-1] == 1).all()) if len(cand) > 1 else True
    rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    out: list[list[np.ndarray]] = [[np.zeros(0, np.int64)] * num_samples for _ in prompts]
    # longest first so that rows of similar length share a batch (less padding)
    head = [None if x is None else np.asarray(x, np.int64) for x in (prefixes or [None] * len(prompts))]
    if len(head) != len(prompts):
        raise SlamError(f"{len(head)} prefixes for {len(prompts)} prompts")
    rows.sort(key=lambda r: -len(prompts[r[0]]) - (0 if head[r[0]] is None else len(head[r[0]])))
    bar = tqdm(total=len(rows) * max_new_tokens, unit="unit", desc="sampling", disable=not progress)
    for b in range(0, len(rows), batch_size):
        batch = rows[b:b + batch_size]
        ids = [info.units_to_ids(prompts[p], bos=True, eos=False) if head[p] is None else
               np.r_[head[p], np.asarray(prompts[p], np.int64) + off] for p, _ in batch]
        width = max(len(x) for x in ids)
        # left padding: every row's last prompt token sits in the last column, so one step appends to all
        input_ids = torch.full((len(batch), width), info.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        seen = torch.zeros((len(batch), len(cand)), dtype=torch.bool)
        for i, x in enumerate(ids):
            input_ids[i, width - len(x):] = torch.as_tensor(x)
            mask[i, width - len(x):] = 1
            if candidates is None:  # the prompt's units count as seen for the repetition penalty
                seen[i, u0 + torch.as_tensor(np.asarray(prompts[batch[i][0]], dtype=np.int64))] = True
        input_ids, mask, seen = input_ids.to(device), mask.to(device), seen.to(device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        gens = [row_generator(seed, p, s, device) for p, s in batch]
        new = torch.zeros((len(batch), max_new_tokens), dtype=torch.long, device=device)
        ended = torch.full((len(batch),), max_new_tokens, dtype=torch.long)  # eos position per row
        past = None
        step_ids, step_pos = input_ids, position_ids
        for t in range(max_new_tokens):
            res = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=past,
                        use_cache=True)
            past = res.past_key_values
            last = res.logits[:, -1]
            last = last[:, int(cand[0]):int(cand[-1]) + 1] if contiguous else last[:, cand]
            logits = next_unit_logits(last, seen, temperature, top_k, repetition_penalty, top_p)
            if temperature > 0:
                probs = torch.softmax(logits, dim=-1)
                choice = torch.stack([torch.multinomial(probs[i], 1, generator=gens[i])[0]
                                      for i in range(len(batch))])
            else:
                choice = logits.argmax(-1)
            chosen = cand[choice]
            new[:, t] = chosen
            seen[torch.arange(len(batch), device=device), choice] = True
            step_ids = chosen[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            bar.update(len(batch))
            if stop_at_eos:
                hit = (chosen == info.eos_id).cpu() & (ended == max_new_tokens)
                ended[hit] = t
                if bool((ended < max_new_tokens).all()):
                    bar.update(len(batch) * (max_new_tokens - 1 - t))
                    break
        for i, (p, s) in enumerate(batch):
            row = new[i, :int(ended[i])].cpu().numpy()
            # ids -> units; with stop_at_eos a drawn pad (or other non-unit id) is dropped, as slamkit decodes
            out[p][s] = row if candidates is not None else row[(row >= off) & (row < off + K)] - off
    bar.close()
    return out


# --- prompts in, audio out (`slam generate`) ---------------------------------------------------------------
def _audio_files(path: Path) -> list[Path]:
    exts = {".wav", ".flac", ".ogg", ".mp3"}
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.suffix.lower() in exts)
        if not files:
            raise SlamError(f"no audio files (wav/flac/ogg/mp3) under {path}")
        return files
    if not path.exists():
        raise SlamError(f"prompt {str(path)!r} does not exist")
    return [path]


def unique_names(names: list[str], files: Sequence[Path]) -> list[str]:
    """Output names of audio prompts: the file stem, with its folder path where two stems collide
    (a/x.wav and b/x.wav -> a-x, b-x): one prompt's output never overwrites another's."""
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(f.parent.resolve()) for f in files]))
    out = []
    for name, f in zip(names, files):
        if names.count(name) > 1:
            rel = f.resolve().relative_to(root).with_suffix("")
            name = "-".join(rel.parts)
        out.append(name)
    return out


def _units_row(spec: str, info: SlamInfo) -> tuple[str, np.ndarray, np.ndarray]:
    folder, _, row_id = spec.rpartition(":") if not Path(spec).exists() else (spec, "", "")
    meta = read_meta(folder)
    if info.tokenizer_hash and meta.get("tokenizer_hash") and meta["tokenizer_hash"] != info.tokenizer_hash:
        raise SlamError(f"{folder}: units made by tokenizer {meta['tokenizer_hash'][:12]}, but the model was "
                        f"trained on {info.tokenizer_hash[:12]}")
    for row in iter_rows(folder, columns=["id", "units", "durations"]):
        if not row_id or row["id"] == row_id:
            return row["id"], np.asarray(row["units"], np.int64), np.asarray(row["durations"], np.int64)
    raise SlamError(f"{folder}: no row with id {row_id!r}")


def generate_files(model_dir: str | Path, out: str | Path, *, prompt: Sequence[str] = (),
                   prompt_units: Sequence[str] = (), prompt_text: Sequence[str] = (),
                   prompt_seconds: float | None = None, temperature: float = 0.8, top_k: int | None = 25,
                   max_new_tokens: int = 150, repetition_penalty: float | None = None, seed: int = 0,
                   num_samples: int = 1, vocoder: str | None = None, tokenizer: str | None = None,
                   batch_size: int = 32, device: str | None = None, to: str = "speech",
                   top_p: float | None = None) -> list[dict]:
    """Continue every prompt (audio files or folders, units dataset rows, or text for interleaved models),
    vocode prompt + continuation into `out` (OUT.<prompt>.<sample>.wav when there are several), write
    OUT.units.jsonl beside it, print a summary; returns the records of OUT.units.jsonl.

    to="text" (interleaved models, speech prompts): continue in text instead; the continuations go to OUT
    (one line each) and OUT.text.jsonl, and no vocoder is loaded."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not prompt and not prompt_units and not prompt_text:
        raise SlamError("give a prompt: --prompt AUDIO, --prompt-units UNITS_DIR[:ID] or --prompt-text TEXT")
    if to not in ("speech", "text"):
        raise SlamError(f"--to {to!r}: expected speech or text")
    if top_p is not None and not 0 < top_p <= 1:
        raise SlamError(f"--top-p {top_p}: must lie in (0, 1]")
    t0 = time.perf_counter()
    model, info = load_for_inference(model_dir, device=device)
    files = [f for p in prompt for f in _audio_files(Path(p))]
    tok = load_model_tokenizer(info, model_dir, tokenizer) if files or tokenizer else None
    if to == "text":
        return _generate_text_files(model, info, model_dir, out, tok, files, prompt_units, prompt_text,
                                    prompt_seconds=prompt_seconds, temperature=temperature, top_k=top_k,
                                    max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, seed=seed,
                                    num_samples=num_samples, batch_size=batch_size, t0=t0, top_p=top_p)
    vocoder = load_vocoder(info, model_dir, vocoder, device=device)
    require_published_units(vocoder, tok)
    names, units, durs, prompt_lengths = [], [], [], []
    if files:
        for f in files:
            wav = load_audio(f)
            if prompt_seconds:
                wav = wav[: int(prompt_seconds * 16000)]
            u, d = audio_to_units(tok, wav)
            if len(u) == 0:  # a continuation of nothing would pass for a continuation of the prompt
                raise SlamError(f"prompt {f}: {len(wav)} samples ({len(wav) / 16000:.3f} s) make no unit; give at "
                                f"least one frame of the tokenizer ({1 / tok.frame_rate:.2f} s)")
            names.append(f.stem), units.append(u), durs.append(d), prompt_lengths.append(len(wav) / 16000)
        names = unique_names(names, files)
    for spec in prompt_units:
        name, u, d = _units_row(spec, info)
        names.append(name), units.append(u), durs.append(d)
        prompt_lengths.append(float(d.sum()) * vocoder.samples_per_frame / vocoder.sample_rate)
    prefixes: list = [None] * len(names)
    texts: list = [None] * len(names)
    if prompt_text:
        text_tok = model_text_tokenizer(info, model_dir)
        for i, text in enumerate(prompt_text):
            names.append(f"text{i}"), units.append(np.zeros(0, np.int64)), durs.append(np.zeros(0, np.int64))
            prompt_lengths.append(0.0), texts.append(text), prefixes.append(text_prompt_ids(info, text_tok, text))
    t1 = time.perf_counter()
    new = sample_units(model, info, units, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_k=top_k, repetition_penalty=repetition_penalty, seed=seed,
                       num_samples=num_samples, batch_size=batch_size, progress=True,
                       prefixes=prefixes, top_p=top_p)
    t_sample = time.perf_counter() - t1
    out = Path(out)
    with lock_beside(out, "generate"):  # one writer per output name (and the files named after it)
        out.parent.mkdir(parents=True, exist_ok=True)
        single = len(units) == 1 and num_samples == 1
        records, gen_seconds = [], 0.0
        for i, name in enumerate(tqdm(names, desc="vocoding", unit="prompt")):
            for s in range(num_samples):
                path = out if single else out.with_name(f"{out.stem}.{name}.{s}{out.suffix or '.wav'}")
                all_units = np.concatenate([units[i], new[i][s]])
                # the prompt keeps its true timing; the generated units' durations are the vocoder's to fill (0)
                all_durs = np.concatenate([durs[i], np.zeros(len(new[i][s]), np.int64)])
                wav = vocoder.vocode(all_units, all_durs)
                sf.write(path, wav, vocoder.sample_rate)
                cont_s = (len(wav) - int(durs[i].sum()) * vocoder.samples_per_frame) / vocoder.sample_rate
                gen_seconds += cont_s
                records.append({"file": path.name, "prompt": name, "sample": s, "seed": seed,
                                "prompt_units": units[i].tolist(), "prompt_durations": durs[i].tolist(),
                                "units": new[i][s].tolist(), "seconds": len(wav) / vocoder.sample_rate,
                                "continuation_seconds": cont_s, **({"prompt_text": texts[i]} if texts[i] else {})})
        jsonl = out.with_suffix(".units.jsonl")
        jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
        n_new = len(records) * max_new_tokens
        print(f"Generated {len(records)} continuation(s) of {len(names)} prompt(s) "
              f"({sum(prompt_lengths):.1f} s of prompt audio) with temperature {temperature}, top-k {top_k}, "
              f"top-p {top_p or 1.0}, "
              f"repetition penalty {repetition_penalty or 1.0}, seed {seed}: {n_new} units in "
              f"{t_sample:.1f} s ({n_new / max(t_sample, 1e-9):.0f} units/s), {gen_seconds:.1f} s of generated "
              f"speech; audio in {out if single else out.parent}, units in {jsonl} "
              f"({time.perf_counter() - t0:.1f} s in all).")
        return records


def _generate_text_files(model: Any, info: SlamInfo, model_dir: str | Path, out: str | Path, tok: Any,
                         files: Sequence[Path], prompt_units: Sequence[str], prompt_text: Sequence[str], *,
                         prompt_seconds: float | None, t0: float, **sampling: Any) -> list[dict]:
    """`slam generate --to text`: speech prompts continued in text (interleaved models)."""
    require_interleaved(info)
    if prompt_text:
        raise SlamError("--to text continues speech prompts; a text prompt is continued in text by any text LM")
    names, units = [], []
    for f in files:
        wav = load_audio(f)
        if prompt_seconds:
            wav = wav[: int(prompt_seconds * 16000)]
        names.append(f.stem), units.append(audio_to_units(tok, wav)[0])
    for spec in prompt_units:
        name, u, _ = _units_row(spec, info)
        names.append(name), units.append(u)
    texts = generate_text(model, info, model_text_tokenizer(info, model_dir), units, progress=True, **sampling)
    records = [{"prompt": name, "sample": s, "seed": sampling.get("seed", 0), "prompt_units": units[i].tolist(),
                "text": t} for i, name in enumerate(names) for s, t in enumerate(texts[i])]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(r["text"].replace("\n", " ") + "\n" for r in records))
    jsonl = out.with_suffix(".text.jsonl")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"Generated {len(records)} text continuation(s) of {len(names)} speech prompt(s) with temperature "
          f"{sampling.get('temperature')}, top-k {sampling.get('top_k')}, seed {sampling.get('seed')}: text in "
          f"{out}, records in {jsonl} ({time.perf_counter() - t0:.1f} s in all).")
    return records


# --- interleaved models: text prompts, text continuations ----------------------------------------------------
def text_prompt_ids(info: SlamInfo, text_tokenizer: Any, text: str) -> np.ndarray:
    """`<s> <text> tokens <speech>`: a text prompt whose continuation is speech."""
    require_interleaved(info)
    toks = np.asarray(text_tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    return np.r_[info.bos_id, info.text_token_id, toks, info.speech_token_id].astype(np.int64)


def generate_speech(model: Any, info: SlamInfo, text_tokenizer: Any = None, *,
                    prompt_units: Sequence[Sequence[int]] | None = None, prompt_text: Sequence[str] | None = None,
                    **sampling: Any) -> list[list[np.ndarray]]:
    """Speech continuations (units) of speech prompts (`<s> <speech> units` ...) or text prompts
    (`<s> <text> tokens <speech>` ...). Only unit ids are ever drawn (text, markers and eos suppressed), with
    slam.generate.sample_units and its sampling arguments (temperature, top_k, max_new_tokens, seed, ...)."""
    require_interleaved(info)
    if (prompt_units is None) == (prompt_text is None):
        raise SlamError("give either prompt_units or prompt_text")
    if prompt_units is not None:
        return sample_units(model, info, [np.asarray(p, np.int64) for p in prompt_units], **sampling)
    if text_tokenizer is None:
        raise SlamError("a text prompt needs the model's text tokenizer")
    prefixes = [text_prompt_ids(info, text_tokenizer, t) for t in prompt_text]
    empty = [np.zeros(0, np.int64) for _ in prompt_text]
    return sample_units(model, info, empty, prefixes=prefixes, **sampling)



def speech_prompt_ids(info: SlamInfo, units: Sequence[int]) -> np.ndarray:
    """`<s> <speech> units <text>`: a speech prompt whose continuation is text."""
    require_interleaved(info)
    u = np.asarray(units, np.int64)
    return np.r_[info.bos_id, info.speech_token_id, u + info.unit_offset, info.text_token_id].astype(np.int64)


def generate_text(model: Any, info: SlamInfo, text_tokenizer: Any, prompt_units: Sequence[Sequence[int]],
                  **sampling: Any) -> list[list[str]]:
    """Text continuations of speech prompts (speech -> text, beside text -> speech in `generate_speech`):
    `<s> <speech> units <text>`, then text ids only (the text tokenizer's entries; units and markers are
    never drawn) until eos or max_new_tokens. Returns [prompt][sample] -> decoded text. Sampling arguments
    as slam.generate.sample_units (temperature, top_k, max_new_tokens, seed, num_samples, ...)."""
    require_interleaved(info)
    if text_tokenizer is None:
        raise SlamError("a text continuation needs the model's text tokenizer")
    prefixes = [speech_prompt_ids(info, p) for p in prompt_units]
    empty = [np.zeros(0, np.int64) for _ in prompt_units]
    ids = sample_units(model, info, empty, prefixes=prefixes, candidates=text_targets(info), **sampling)
    return [[text_tokenizer.decode(x.tolist(), skip_special_tokens=True) for x in row] for row in ids]
