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
        from slam.model import save_model
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
