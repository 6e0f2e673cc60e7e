"""GenPPL: how plausible is what the model says? prompt -> continuation -> speech -> text -> text-LM perplexity.

    prompts: the first N (1000) audio files of a folder (for a Spoken StoryCloze folder: the N first
             correct stories), each cut to its first 3.0 s, tokenised with the model's own tokenizer
    sample:  150 units, temperature 0.8, top-k 25, optional repetition penalty, seeded
             (slam.generate.sample_units, the same sampler as `slam generate`)
    vocode:  prompt + continuation units (as slamkit does: the whole utterance is transcribed) -> 16 kHz
    ASR:     HF Whisper (default openai/whisper-large-v3-turbo), transcribe
    text LM: HF causal LM (default meta-llama/Llama-3.2-1B): per transcript, the mean NLL of its tokens
             after BOS; GenPPL = exp(mean over transcripts of that mean NLL)
    auto-BLEU (bigrams) of each transcript, averaged (slam.eval.autobleu)

Two protocols (`--genppl-protocol`), which differ in six choices:

    choice                 paper (default; as slamkit's asr_perplexity)      slam
    1 end of sequence      eos may be drawn and ends the continuation        never drawn: always 150 units
    2 prompt timing        durations predicted for the whole sequence         the prompt keeps its true frames
    3 Whisper language     detected by Whisper                                forced to English
    4 transcript text      as Whisper wrote it (leading space kept)           stripped
    5 text LM precision    float32 everywhere                                 bf16 on CUDA, float32 on a CPU
    6 auto-BLEU words      NLTK's word tokenizer (slam.eval.autobleu)          slam's regex

Both cut the prompt at 3.0 s of samples and take every file, as slamkit's GenPPL config does (prompt_length
3, no alignment, no minimum length; its LLM-as-judge config instead cuts at the word end nearest 3 s and
skips files under 6 s: `prompt_cut="alignment"` and `min_file_seconds` do that here).

Transcripts the text LM cannot score (fewer than one token after BOS) are left out of GenPPL and counted
as `n_empty` (slamkit's mean would turn NaN on one); they count 0 in auto-BLEU, as in slamkit. Each part can
be swapped by name or local path (--asr, --text-lm, --vocoder); a part that cannot be loaded is a one-line
error saying which and how. With `audio_dir`, each vocoded utterance is written there as NNNN.wav.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from slam.audio import find_audio, load_audio
from slam.errors import SlamError
from slam.eval.autobleu import auto_bleu
from slam.eval.layouts import read_storycloze
from slam.eval.pairs import score_sequences
from slam.generate import sample_units
from slam.tokens import SlamInfo
from slam.units.dataset import dedup as dedup_frames
from slam.vocoder.hifigan import require_published_units


@dataclass(frozen=True)
class Protocol:
    """The six choices on which slam's and slamkit's GenPPL differ (see the module docstring)."""

    name: str
    sample_eos: bool
    prompt_durations: str  # "predict" | "keep"
    asr_language: str | None  # None: Whisper detects the language
    strip: bool
    text_lm_dtype: str  # "float32" | "auto" (bf16 on CUDA)
    autobleu_words: str  # "nltk" | "regex"


PROTOCOLS = {
    "paper": Protocol("paper", sample_eos=True, prompt_durations="predict", asr_language=None, strip=False,
                      text_lm_dtype="float32", autobleu_words="nltk"),
    "slam": Protocol("slam", sample_eos=False, prompt_durations="keep", asr_language="en", strip=True,
                     text_lm_dtype="auto", autobleu_words="regex"),
}


def get_protocol(name: str | Protocol) -> Protocol:
    if isinstance(name, Protocol):
        return name
    if name not in PROTOCOLS:
        raise SlamError(f"GenPPL protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


DEFAULT_ASR = "openai/whisper-large-v3-turbo"
DEFAULT_TEXT_LM = "meta-llama/Llama-3.2-1B"


def _load_error(what: str, name: str, flag: str, e: Exception) -> SlamError:
    return SlamError(f"cannot load the {what} {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     f"pass {flag} with a local folder or a hub id that is available here")


class WhisperASR:
    """Batched transcription with an HF Whisper checkpoint (processor + seq2seq model).

    language: "en" forces English; None lets Whisper detect it (as slamkit's pipeline does). strip: trim the
    transcripts (Whisper writes a leading space). max_new_tokens None: as many as the decoder holds (the
    pipeline's default), else capped."""

    def __init__(self, name: str = DEFAULT_ASR, device: str = "cpu", max_new_tokens: int | None = 128,
                 language: str | None = "en", strip: bool = True):
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(name)
            self.model = AutoModelForSpeechSeq2Seq.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise _load_error("ASR", name, "--asr", e) from None
        self.name, self.device, self.dtype, self.max_new_tokens = name, device, dtype, max_new_tokens
        self.language, self.strip = language, strip

    @torch.inference_mode()
    def __call__(self, wavs: Sequence[np.ndarray], sample_rate: int = 16000) -> list[str]:
        # Whisper reads 30 s windows: 3 s of prompt + 150 units (~6-8 s) fit in one
        feats = self.processor([np.asarray(w, dtype=np.float32) for w in wavs], sampling_rate=sample_rate,
                               return_tensors="pt")
        # the decoder also holds 3-4 start tokens (start, language, task, no-timestamps)
        room = int(getattr(self.model.config, "max_target_positions", 448)) - 8
        kw = {"language": self.language} if self.language else {}
        out = self.model.generate(feats.input_features.to(self.device, self.dtype), task="transcribe",
                                  max_new_tokens=min(self.max_new_tokens or room, room), **kw)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts] if self.strip else list(texts)


class TextLM:
    """Per-transcript mean token NLL under an HF causal LM (BOS prepended when the tokenizer has one)."""

    def __init__(self, name: str = DEFAULT_TEXT_LM, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # "auto": bf16 on CUDA (slam's choice); "float32": as slamkit loads it (no dtype given)
        if dtype not in ("auto", "float32"):
            raise SlamError(f"text LM dtype {dtype!r}: expected 'auto' or 'float32'")
        dtype = torch.bfloat16 if dtype == "auto" and str(device).startswith("cuda") else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
            self.model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as e:
            raise _load_error("text LM", name, "--text-lm", e) from None
        self.name, self.dtype = name, dtype

    def token_ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def nll(self, texts: Sequence[str], batch_tokens: int = 8192) -> list[float | None]:
        """Mean NLL per predicted token of each text; None where there is nothing to predict."""
        ids = [self.token_ids(t) if t else [] for t in texts]
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


def prompt_files(folder: str | Path, n: int, min_seconds: float | None = None) -> list[Path]:
    """First n prompts: the positives of a Spoken StoryCloze folder in pair order, else sorted audio files;
    with min_seconds, files shorter than that are skipped first (slamkit's `min_file_length`)."""
    folder = Path(folder)
    if not folder.exists():
        raise SlamError(f"GenPPL prompts {str(folder)!r} do not exist")
    try:
        files = [p.positive[0] for p in read_storycloze(folder).pairs]
    except SlamError:
        files = [path for _, path, _ in find_audio(folder)]
    if min_seconds:
        files = [f for f in files if sf.info(str(f)).frames >= min_seconds * sf.info(str(f)).samplerate]
    if not files:
        raise SlamError(f"{folder}: no prompt audio" + (f" of at least {min_seconds} s" if min_seconds else ""))
    return files[:n]


def alignment_cut(path: Path, seconds: float, alignment_dir: str | Path | None = None) -> float:
    """slamkit's word-aligned cut: the end time of the aligned word whose end is nearest `seconds`, from
    `<stem>.json` ({"aligned_text": [[word, start, end], ...]}) beside the audio or in alignment_dir."""
    side = (Path(alignment_dir) / (path.name.split(".")[0] + ".json")) if alignment_dir else path.with_suffix(".json")
    try:
        words = json.loads(side.read_text())["aligned_text"]
        ends = np.asarray([float(w[2]) for w in words])
    except FileNotFoundError:
        raise SlamError(f"{path}: no word alignment {side} (prompt_cut='alignment' needs one per file)") from None
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise SlamError(f"{side}: expected {{'aligned_text': [[word, start, end], ...]}} ({e})") from None
    if ends.size == 0:
        raise SlamError(f"{side}: no aligned words")
    return float(ends[np.abs(ends - seconds).argmin()])  # the first of equally near ends, as torch argmin


def cut_prompts(files: Sequence[Path], seconds: float, how: str = "seconds",
                alignment_dir: str | Path | None = None) -> list[np.ndarray]:
    if how not in ("seconds", "alignment"):
        raise SlamError(f"prompt cut {how!r}: expected 'seconds' or 'alignment'")
    out = []
    for f in files:
        wav = load_audio(f)
        cut = seconds if how == "seconds" else alignment_cut(Path(f), seconds, alignment_dir)
        out.append(wav[: int(cut * 16000)])
    return out


def evaluate_genppl(model: Any, info: SlamInfo, prompts: str | Path, *, tokenizer: Any, vocoder: Any,
                    asr: Callable[[Sequence[np.ndarray]], list[str]], text_lm: TextLM,
                    protocol: str | Protocol = "paper", n_prompts: int = 1000, prompt_seconds: float = 3.0,
                    prompt_cut: str = "seconds", alignment_dir: str | Path | None = None,
                    min_file_seconds: float | None = None, max_new_tokens: int = 150,
                    temperature: float = 0.8, top_k: int | None = 25, repetition_penalty: float | None = None,
                    seed: int = 0, batch_size: int = 32, dedup: bool = True, audio_dir: str | Path | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """GenPPL and auto-BLEU of `model`; returns the result dict with every transcript in `samples`.

    The ASR's language/stripping and the text LM's dtype are set where they are built (build_genppl_parts
    builds them for a protocol); this function applies the other choices of `protocol` and records all six."""
    proto = get_protocol(protocol)
    require_published_units(vocoder, tokenizer)
    t0 = time.perf_counter()
    files = prompt_files(prompts, n_prompts, min_file_seconds)
    units, durs = [], []
    bar = tqdm(total=len(files), desc="prompts", unit="file", disable=not progress)
    for start in range(0, len(files), 16):  # 16 per call: a HuBERT tokenizer batches them on its device
        wavs = cut_prompts(files[start:start + 16], prompt_seconds, prompt_cut, alignment_dir)
        encoded = tokenizer.encode_batch(wavs) if hasattr(tokenizer, "encode_batch") else map(tokenizer.encode, wavs)
        for frames in encoded:
            frames = np.asarray(frames, dtype=np.int64)
            u, d = dedup_frames(frames) if dedup else (frames, np.ones_like(frames))
            units.append(u), durs.append(d)
        bar.update(len(wavs))
    bar.close()
    new = sample_units(model, info, units, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size, progress=progress,
                       stop_at_eos=proto.sample_eos)
    if audio_dir is not None:
        audio_dir = Path(audio_dir)
        audio_dir.mkdir(parents=True, exist_ok=True)
    samples, texts = [], []
    for start in tqdm(range(0, len(files), batch_size), desc="vocode+ASR", unit="batch", disable=not progress):
        idx = range(start, min(start + batch_size, len(files)))
        wavs = []
        for i in idx:
            cont = new[i][0]
            all_units = np.concatenate([units[i], cont])
            if proto.prompt_durations == "keep":  # the prompt at its own timing, the rest predicted (0)
                d = np.concatenate([durs[i], np.zeros(len(cont), np.int64)])
            else:  # slamkit vocodes the deduplicated sequence with predicted durations throughout
                d = np.zeros(len(all_units), np.int64)
            wavs.append(vocoder.vocode(all_units, d) if len(all_units) else np.zeros(0, np.float32))
        # slamkit transcribes an empty utterance as ""
        heard = asr([w for w in wavs if len(w)]) if any(len(w) for w in wavs) else []
        it = iter(heard)
        texts.extend(next(it) if len(w) else "" for w in wavs)
        for i, w in zip(idx, wavs):
            rec = {"prompt": str(files[i]), "prompt_units": int(len(units[i])), "units": new[i][0].tolist(),
                   "eos": bool(len(new[i][0]) < max_new_tokens), "seconds": len(w) / 16000}
            if audio_dir is not None:
                rec["audio"] = f"{audio_dir.name}/{i:04d}.wav"
                sf.write(audio_dir / f"{i:04d}.wav", w, getattr(vocoder, "sample_rate", 16000))
            samples.append(rec)
    nlls = text_lm.nll(texts)
    bleus = [auto_bleu(t, 2, proto.autobleu_words) for t in texts]
    for s, t, v, b in zip(samples, texts, nlls, bleus):
        s.update(text=t, nll=v, auto_bleu=b)
    res = genppl_from_nll(nlls)
    return {"metric": "genppl", **res, "n_prompts": len(files), "n_empty": len(files) - res["n"],
            "auto_bleu": float(np.mean(bleus)), "protocol": asdict(proto),
            "n_eos": sum(s["eos"] for s in samples),
            "asr": getattr(asr, "name", type(asr).__name__), "asr_language": getattr(asr, "language", None),
            "text_lm": text_lm.name, "text_lm_dtype": str(text_lm.dtype).replace("torch.", ""),
            "vocoder": type(vocoder).__name__, "prompt_seconds": prompt_seconds, "prompt_cut": prompt_cut,
            "min_file_seconds": min_file_seconds,
            "sampling": {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
                         "repetition_penalty": repetition_penalty, "seed": seed},
            "seconds": time.perf_counter() - t0, "samples": samples}


def build_genppl_parts(protocol: str | Protocol, asr: str | None = None, text_lm: str | None = None,
                       device: str = "cpu", text_lm_too: bool = True) -> tuple[WhisperASR, TextLM | None]:
    """The ASR and text LM set up as `protocol` says (language, stripping, dtype)."""
    proto = get_protocol(protocol)
    whisper = WhisperASR(asr or DEFAULT_ASR, device=device, language=proto.asr_language, strip=proto.strip,
                         max_new_tokens=None if proto.name == "paper" else 128)
    return whisper, (TextLM(text_lm or DEFAULT_TEXT_LM, device=device, dtype=proto.text_lm_dtype)
                     if text_lm_too else None)
