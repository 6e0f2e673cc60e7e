"""GenPPL: how plausible is what the model says? prompt -> continuation -> speech -> text -> text-LM perplexity.

    prompts: the first N (1000) audio files of a folder (for a Spoken StoryCloze folder: the N first
             correct stories), each cut to its first 3.0 s, tokenised with the model's own tokenizer
    sample:  150 units, temperature 0.8, top-k 25, optional repetition penalty, special ids suppressed,
             seeded (slam.generate.sample_units, the same sampler as `slam generate`)
    vocode:  prompt + continuation units (as slamkit does: the whole utterance is transcribed) -> 16 kHz,
             the prompt at its true timing, the continuation with the vocoder's durations
    ASR:     HF Whisper (default openai/whisper-large-v3-turbo), English, transcribe
    text LM: HF causal LM (default meta-llama/Llama-3.2-1B): per transcript, the mean NLL of its tokens
             after BOS; GenPPL = exp(mean over transcripts of that mean NLL)
    auto-BLEU (bigrams) of each transcript, averaged (slam.eval.autobleu)

Transcripts the text LM cannot score (fewer than one token after BOS) are left out of GenPPL and counted
as `n_empty`; they count 0 in auto-BLEU, as in slamkit. Each part can be swapped by name or local path
(--asr, --text-lm, --vocoder); a part that cannot be loaded is a one-line error saying which and how.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from slam.audio import find_audio, load_audio
from slam.errors import SlamError
from slam.eval.autobleu import auto_bleu
from slam.eval.pairs import read_storycloze, score_sequences
from slam.generate import sample_units
from slam.tokens import SlamInfo
from slam.units.dataset import dedup as dedup_frames

DEFAULT_ASR = "openai/whisper-large-v3-turbo"
DEFAULT_TEXT_LM = "meta-llama/Llama-3.2-1B"


def _load_error(what: str, name: str, flag: str, e: Exception) -> SlamError:
    return SlamError(f"cannot load the {what} {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     f"pass {flag} with a local folder or a hub id that is available here")


class WhisperASR:
    """Batched English transcription with an HF Whisper checkpoint (processor + seq2seq model)."""

    def __init__(self, name: str = DEFAULT_ASR, device: str = "cpu", max_new_tokens: int = 128):
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(name)
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise _load_error("ASR", name, "--asr", e) from None
        self.name, self.device, self.dtype, self.max_new_tokens = name, device, dtype, max_new_tokens

    @torch.inference_mode()
    def __call__(self, wavs: Sequence[np.ndarray], sample_rate: int = 16000) -> list[str]:
        # Whisper reads 30 s windows: 3 s of prompt + 150 units (~6-8 s) fit in one
        feats = self.processor([np.asarray(w, dtype=np.float32) for w in wavs], sampling_rate=sample_rate,
                               return_tensors="pt")
        # the decoder also holds 3-4 start tokens (start, language, task, no-timestamps)
        room = int(getattr(self.model.config, "max_target_positions", 448)) - 8
        out = self.model.generate(feats.input_features.to(self.device, self.dtype), language="en",
                                  task="transcribe", max_new_tokens=min(self.max_new_tokens, room))
        return [t.strip() for t in self.processor.batch_decode(out, skip_special_tokens=True)]


class TextLM:
    """Per-transcript mean token NLL under an HF causal LM (BOS prepended when the tokenizer has one)."""

    def __init__(self, name: str = DEFAULT_TEXT_LM, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise _load_error("text LM", name, "--text-lm", e) from None
        self.name = name

    def token_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def nll(self, texts: Sequence[str], batch_tokens: int = 8192) -> list[float | None]:
        """Mean NLL per predicted token of each text; None where there is nothing to predict."""
        ids = [self.token_ids(t) if t.strip() else [] for t in texts]
        keep = [i for i, x in enumerate(ids) if len(x) >= 2]
        out: list[float | None] = [None] * len(texts)
        if keep:
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            scores = score_sequences(self.model, [ids[i] for i in keep], "mean", batch_tokens=batch_tokens,
                                     pad_id=pad)
            for i, s in zip(keep, scores):
                out[i] = float(s)
        return out


def genppl_from_nll(nlls: Sequence[float | None]) -> dict[str, Any]:
    """GenPPL = exp(mean of the per-transcript mean NLLs), with a 95% CI from the NLLs' standard error."""
    x = np.asarray([v for v in nlls if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"value": float("nan"), "n": 0, "ci95": [float("nan"), float("nan")], "mean_nll": float("nan")}
    m = float(x.mean())
    half = 1.96 * float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else float("nan")
    return {"value": math.exp(m), "n": int(x.size), "ci95": [math.exp(m - half), math.exp(m + half)],
            "mean_nll": m}


def prompt_files(folder: str | Path, n: int) -> list[Path]:
    """First n prompts: the positives of a Spoken StoryCloze folder in pair order, else sorted audio files."""
    folder = Path(folder)
    if not folder.exists():
        raise SlamError(f"GenPPL prompts {str(folder)!r} do not exist")
    try:
        files = [p.positive[0] for p in read_storycloze(folder).pairs]
    except SlamError:
        files = [path for _, path, _ in find_audio(folder)]
    if not files:
        raise SlamError(f"{folder}: no prompt audio")
    return files[:n]


def evaluate_genppl(model: Any, info: SlamInfo, prompts: str | Path, *, tokenizer: Any, vocoder: Any,
                    asr: Callable[[Sequence[np.ndarray]], list[str]], text_lm: TextLM, n_prompts: int = 1000,
                    prompt_seconds: float = 3.0, max_new_tokens: int = 150, temperature: float = 0.8,
                    top_k: int | None = 25, repetition_penalty: float | None = None, seed: int = 0,
                    batch_size: int = 32, dedup: bool = True, progress: bool = True) -> dict[str, Any]:
    """GenPPL and auto-BLEU of `model`; returns the result dict with every transcript in `samples`."""
    t0 = time.perf_counter()
    files = prompt_files(prompts, n_prompts)
    units, durs = [], []
    bar = tqdm(total=len(files), desc="prompts", unit="file", disable=not progress)
    for start in range(0, len(files), 16):  # 16 per call: a HuBERT tokenizer batches them on its device
        wavs = [load_audio(f)[: int(prompt_seconds * 16000)] for f in files[start:start + 16]]
        encoded = tokenizer.encode_batch(wavs) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, wavs)
        for frames in encoded:
            frames = np.asarray(frames, dtype=np.int64)
            u, d = dedup_frames(frames) if dedup else (frames, np.ones_like(frames))
            units.append(u), durs.append(d)
        bar.update(len(wavs))
    bar.close()
    new = sample_units(model, info, units, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size, progress=progress)
    samples, texts = [], []
    for start in tqdm(range(0, len(files), batch_size), desc="vocode+ASR", unit="batch", disable=not progress):
        idx = range(start, min(start + batch_size, len(files)))
        wavs = [vocoder.vocode(np.concatenate([units[i], new[i][0]]),
                               np.concatenate([durs[i], np.zeros(max_new_tokens, np.int64)])) for i in idx]
        texts.extend(asr(wavs))
        samples.extend({"prompt": str(files[i]), "units": new[i][0].tolist(), "seconds": len(w) / 16000}
                       for i, w in zip(idx, wavs))
    nlls = text_lm.nll(texts)
    bleus = [auto_bleu(t) for t in texts]
    for s, t, v, b in zip(samples, texts, nlls, bleus):
        s.update(text=t, nll=v, auto_bleu=b)
    res = genppl_from_nll(nlls)
    return {"metric": "genppl", **res, "n_prompts": len(files), "n_empty": len(files) - res["n"],
            "auto_bleu": float(np.mean(bleus)), "asr": getattr(asr, "name", type(asr).__name__),
            "text_lm": text_lm.name, "vocoder": type(vocoder).__name__, "prompt_seconds": prompt_seconds,
            "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                         "repetition_penalty": repetition_penalty, "seed": seed},
            "seconds": time.perf_counter() - t0, "samples": samples}
