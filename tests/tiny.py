"""Tiny deterministic models and datasets shared by the tests (no hub, no downloads, seconds to build).

Every builder is a pure function of its arguments and seed, so a test that pins numbers on them (the golden
per-step losses in test_golden.py) sees the same inputs on every machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# The tiny Qwen2 shape every training test uses: ~25k parameters, 2 layers, 4 query / 2 KV heads.
TINY_QWEN2 = {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
              "tie_word_embeddings": True}

# The same shape as `slam train` overrides of the `tiny-cpu` recipe.
TINY_MODEL_OVERRIDES = ["model.config.hidden_size=32", "model.config.intermediate_size=64"]

SENTENCES = [
    "Ben met Zoe at the park.", "The tomatoes were tall.", "Ben likes to pick the tulips.",
    "Max liked the woods.", "Then Max went home from the forest.", "Anna sliced the sticky bun.",
    "The cake is very sticky.", "Tom held the loud piano.", "He saw five pianos near the music room.",
]


def ramp_units(out: Path, n: int = 120, n_units: int = 16, seed: int = 0) -> Path:
    """~6k tokens of learnable unit sequences (arithmetic progressions mod n_units) as a units dataset."""
    from slam.units.dataset import UnitsWriter

    rng = np.random.default_rng(seed)
    with UnitsWriter(out, {"n_units": n_units, "tokenizer_hash": "t", "dedup": True}) as w:
        for i in range(n):
            length = int(rng.integers(8, 90))
            u = (rng.integers(0, n_units) + rng.integers(1, 4) * np.arange(length)) % n_units
            w.add(f"u{i:04d}", u, np.ones(length), length / 25, "test")
    return out


def train_overrides(units: Path, out: Path, *extra: str) -> list[str]:
    """`slam train tiny-cpu` overrides for a 6-step run at context 32, 4 sequences a step in 2 micro-batches."""
    return [f"data.train=[{{path: {units}}}]", f"out={out}", "data.context=32", "data.val_fraction=0.1",
            *TINY_MODEL_OVERRIDES, "batch.size=4", "batch.micro=2", "budget.time=null", "budget.steps=6",
            "schedule.warmup_min_steps=2", "log_every=1", "eval.every_steps=3", "eval.batches=2",
            "checkpoint.every_steps=2", "checkpoint.every_minutes=0", *extra]


def slam_model_folder(root: Path, n_units: int = 16, seed: int = 0) -> Path:
    """A tiny random Qwen2 saved as a slam model folder, with a weight-free mel tokenizer in slam.json."""
    from slam.model import random_init
    from slam.model_folder import save_model
    from slam.tokens import SlamInfo
    from slam.units.kmeans import KMeans
    from slam.units.melkmeans import MelParams
    from slam.units.tokenizer import load_tokenizer

    rng = np.random.default_rng(seed)
    km = KMeans(rng.normal(size=(n_units, 80)).astype(np.float32), rng.normal(-6, 1, 80), np.full(80, 3.0),
                {"kind": "mel", **MelParams().to_dict()})
    km.save(root / "km.npz")
    tok = load_tokenizer(f"mel:{root / 'km.npz'}")
    folder = root / "model"
    info = SlamInfo(n_units=n_units, tokenizer=tok.save_to(root / "tok"), tokenizer_hash=tok.hash)
    model, info = random_init(TINY_QWEN2, n_units, seed=seed, info=info)
    save_model(model, info, folder, tokenizer_root=root / "tok")
    return folder


def ramp_prefs(out: Path, start: Path, n_pairs: int = 8, n_units: int = 16, seed: int = 1) -> Path:
    """Preference pairs in the units-dataset form: chosen continues the prompt's ramp, rejected is noise."""
    from slam.tokens import SlamInfo
    from slam.units.dataset import UnitsWriter

    rng = np.random.default_rng(seed)
    info = SlamInfo.load(start)
    with UnitsWriter(out, {"n_units": n_units, "tokenizer_hash": info.tokenizer_hash, "dedup": True}) as w:
        for i in range(n_pairs):
            a, step = int(rng.integers(0, n_units)), int(rng.integers(1, 4))
            ramp = (a + step * np.arange(12)) % n_units
            parts = {"prompt": ramp[:6], "chosen": ramp[6:], "rejected": rng.integers(0, n_units, 6)}
            for f, u in parts.items():
                w.add(f"pair{i}-{f}", u, np.ones_like(u), len(u) / 25, "test")
    return out


def make_text_tokenizer(folder: Path, lines=SENTENCES, vocab_size: int = 200):
    """A byte-level BPE trained here (no hub): decoding gives back the text exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(lines, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    tok.save_pretrained(str(folder))
    return tok


def make_base_model(folder: Path, tok, tied: bool = False):
    """A tiny random Llama 'text LM' saved with its tokenizer (the TWIST base)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok) + 7, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return model


def fake_words(text: str, seed: int = 0, frame_rate: float = 25.0, n_units: int = 20):
    """Words laid out with pauses and units deduplicated from random frames: the kind of row `slam tokenize`
    writes for a manifest with word times. Returns (units, durations, [(word, start, end), ...])."""
    from slam.units.dataset import dedup

    rng = np.random.default_rng(seed)
    words, t = [], 0.1
    for w in text.split():
        dur = 0.12 + 0.06 * len(w)
        words.append((w.strip(".,"), t, t + dur))
        t += dur + float(rng.uniform(0.0, 0.2))
    frames = rng.integers(0, n_units, size=int((t + 0.2) * frame_rate))
    units, durations = dedup(frames)
    return units, durations, words


def worded_units(out: Path, lines=SENTENCES, repeat: int = 3, n_units: int = 20) -> Path:
    """A units dataset with `text` and `words` columns (what interleaved training reads)."""
    from slam.units.dataset import UnitsWriter

    meta = {"n_units": n_units, "tokenizer_hash": "t", "dedup": True, "frame_rate": 25.0}
    with UnitsWriter(out, meta) as w:
        for i, text in enumerate(list(lines) * repeat):
            units, durations, words = fake_words(text, seed=i, n_units=n_units)
            w.add(f"x{i:03d}", units, durations, 3.0, "test", text=text,
                  words=[{"word": a, "start": b, "end": c} for a, b, c in words])
    return out
