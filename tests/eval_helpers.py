"""Tiny local models for the eval / generate / vocoder tests (no hub, random weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from slam.tokens import SlamInfo


def tiny_lm(n_units: int = 20, seed: int = 0, hidden: int = 32, layers: int = 2):
    """A random Qwen2 speech LM over 2 + n_units ids, with its SlamInfo."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    info = SlamInfo(n_units=n_units)
    cfg = Qwen2Config(vocab_size=info.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                      use_cache=False, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # a bit sharper than the default init (std 0.02): logits spread over a few nats
        model.lm_head.weight.normal_(0, 0.1)
    return model, info


def save_model_folder(folder: Path, model, info: SlamInfo) -> Path:
    folder = Path(folder)
    try:
        from slam.model_folder import save_model
    except ImportError:
        model.save_pretrained(folder)
        info.save(folder)
    else:
        save_model(model, info, folder)
    return folder


class EnergyTokenizer:
    """A deterministic stand-in speech tokenizer for reader/scoring tests: one unit per 640-sample frame,
    the frame's RMS quantised into n_units log-spaced bins. (End-to-end tests use the real mel tokenizer.)"""

    kind = "energy"
    frame_rate = 25.0

    def __init__(self, n_units: int = 20, tag: str = "a"):
        self.n_units = n_units
        self.hash = f"energy-{n_units}-{tag}"
        self.calls = 0

    def encode(self, wav):
        import numpy as np

        self.calls += 1
        t = len(wav) // 640
        frames = np.asarray(wav[: t * 640], dtype=np.float64).reshape(t, 640)
        rms = np.sqrt((frames ** 2).mean(1) + 1e-12)
        return np.clip(((np.log10(rms) + 4) / 4 * self.n_units).astype(int), 0, self.n_units - 1)


def write_wav(path, seconds: float, seed: int):
    import soundfile as sf

    from conftest import synth_speechlike

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth_speechlike(seconds, seed=seed), 16000)
    return path


def mel_model_folder(root: Path, texts=("the quick brown fox jumps over the lazy dog",
                                        "a speech model learns from sound alone"), n_units: int = 40):
    """A tiny random speech LM whose slam.json names a real mel tokenizer fitted on espeak speech.
    Returns (folder, [wav paths])."""
    import subprocess

    import numpy as np

    from slam.audio import load_audio
    from slam.units.kmeans import fit_kmeans
    from slam.units.melkmeans import MelFeatures, MelParams
    from slam.units.tokenizer import Tokenizer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, text in enumerate(texts):
        subprocess.run(["espeak-ng", "-w", str(root / f"utt{i}.wav"), text], check=True)
        paths.append(root / f"utt{i}.wav")
    p = MelParams()
    mel = MelFeatures(p)
    km = fit_kmeans(np.concatenate([mel(load_audio(f)) for f in paths]), n_units, params={"kind": "mel", **p.to_dict()})
    tok = Tokenizer("mel", km, mel=mel)
    model, _ = tiny_lm(n_units=n_units)
    folder = root / "model"
    save_model_folder(folder, model, SlamInfo(n_units=n_units))
    SlamInfo(n_units=n_units, tokenizer=tok.save_to(folder), tokenizer_hash=tok.hash).save(folder)
    return folder, paths


def _byte_vocab(extra: list[str]) -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for s in extra:
        vocab[s] = len(vocab)
    return vocab


def tiny_whisper(folder: Path) -> Path:
    """A random 1-layer Whisper with a byte-level tokenizer and the special tokens generate() needs."""
    import json

    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>",
                "<|notimestamps|>"]
    vocab = _byte_vocab(specials)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=specials[0],
                           bos_token=specials[0], eos_token=specials[0], pad_token=specials[0])
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(folder)
    eot = vocab["<|endoftext|>"]
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=eot, bos_token_id=eot,
                        eos_token_id=eot, decoder_start_token_id=vocab["<|startoftranscript|>"])
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.lang_to_id = {"<|en|>": vocab["<|en|>"]}
    gc.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    gc.no_timestamps_token_id = vocab["<|notimestamps|>"]
    gc.is_multilingual, gc._from_model_config, gc.begin_suppress_tokens, gc.max_length = True, False, None, 24
    gc.suppress_tokens = list(range(eot, len(vocab)))  # a random decoder would end at once or write only
    # special tokens; this one always writes (byte) text
    model.save_pretrained(folder)
    return folder


def tiny_text_lm(folder: Path) -> Path:
    """A random 1-layer Llama with a byte-level BPE tokenizer that adds BOS, like Llama-3.2's."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _byte_vocab(["<|begin_of_text|>", "<|end_of_text|>"])
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                  pad_token="<|end_of_text|>")
    tok.save_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=vocab["<|begin_of_text|>"],
                      eos_token_id=vocab["<|end_of_text|>"], pad_token_id=vocab["<|end_of_text|>"])
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


# --- benchmark folders in the published layouts ----------------------------------------------------------------
def zr_stem(key: str) -> str:
    """An 11-letter file stem like the ZeroSpeech 2021 ones (e.g. `aAAfmkmQpVz`)."""
    import hashlib
    import string

    return "".join(string.ascii_letters[b % 52] for b in hashlib.sha256(key.encode()).digest()[:11])


ZR_COLUMNS = {"lexical": ["id", "filename", "voice", "frequency", "word", "phones", "length", "correct"],
              "syntactic": ["id", "filename", "voice", "type", "subtype", "transcription", "correct"]}


def zr_folder(folder: Path, kind: str, rows: list[dict], seconds: float = 0.3) -> list[Path]:
    """A ZeroSpeech 2021 `lexical|syntactic/{dev,test}` folder: one 16 kHz wav per row (named by an
    11-letter stem, its audio from the row's `seed`: equal seeds = identical bytes) and gold.csv with the
    published columns, rows in the given order. Returns the wav of each row."""
    import csv

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with open(folder / "gold.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ZR_COLUMNS[kind])
        w.writeheader()
        for k, r in enumerate(rows):
            stem = zr_stem(f"{folder.name}/{k}")
            paths.append(write_wav(folder / f"{stem}.wav", seconds, seed=r["seed"]))
            w.writerow({c: r.get(c, "") if c != "filename" else stem for c in ZR_COLUMNS[kind]})
    return paths


def salmon_folder(root: Path, parts, samples: int = 2, seconds: float = 0.3) -> Path:
    """A SALMon folder as released: `<part>/sample_<i>_<j>.wav` (j = 0 positive, 1 negative), 16 kHz."""
    root = Path(root)
    for n, part in enumerate(parts):
        for i in range(samples):
            write_wav(root / part / f"sample_{i}_0.wav", seconds, seed=1000 + 10 * n + i)
            write_wav(root / part / f"sample_{i}_1.wav", seconds, seed=2000 + 10 * n + i)
    return root
