"""Unit vocoders: units -> 16 kHz waveform, chosen by the tokenizer that made the units.

    hubert (mHuBERT-25Hz k-means 500) -> "hifigan": the published unit HiFi-GAN with duration predictor
    mel (the weight-free default)     -> "melinv": centroid -> log-mel -> Griffin-Lim, no weights at all

Both expose `.sample_rate` and `.vocode(units, durations=None) -> float32 waveform`, where a duration of 0
(or None for all) means "unknown": the vocoder fills it in (prediction or a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slam.errors import SlamError
from slam.tokens import SlamInfo

# Which vocoders can speak units of each tokenizer kind (the first is the default).
FITTING = {"hubert": ["hifigan"], "mel": ["melinv"]}


def tokenizer_kind(info: SlamInfo) -> str:
    return str(info.tokenizer.get("kind", "")) if info.tokenizer else ""


def load_vocoder(info: SlamInfo, model_dir: str | Path, name: str | None = None, device: str = "cpu") -> Any:
    """The vocoder for a model's units. name: "hifigan", "melinv", a HiFi-GAN `.pt` file or a folder holding
    the published HiFi-GAN files; None picks by the tokenizer kind in slam.json."""
    kind = tokenizer_kind(info)
    fitting = FITTING.get(kind, [])
    if name is None:
        if not fitting:
            raise SlamError(f"no vocoder fits tokenizer kind {kind!r} of this model; vocoders exist for "
                            + ", ".join(f"{k} ({', '.join(v)})" for k, v in FITTING.items()))
        name = fitting[0]
    if name == "melinv":
        if kind != "mel":
            raise SlamError(f"the melinv vocoder inverts the mel tokenizer's centroids; this model's tokenizer is "
                            f"{kind!r} (fitting: {', '.join(fitting) or 'none'})")
        from slam.vocoder.melinv import load_melinv

        return load_melinv(info, model_dir)
    if name == "hifigan" or Path(name).suffix == ".pt" or Path(name).is_dir():
        from slam.vocoder.hifigan import load_hifigan

        if name == "hifigan" and kind != "hubert":  # the published one speaks mHuBERT-25Hz km500 units only
            raise SlamError(f"the published HiFi-GAN speaks mHuBERT-25Hz units; this model's tokenizer is {kind!r} "
                            f"(fitting: {', '.join(fitting) or 'none'})")
        vocoder = load_hifigan(None if name == "hifigan" else name, device=device)
        if vocoder.cfg.num_embeddings != info.n_units:
            raise SlamError(f"the HiFi-GAN speaks {vocoder.cfg.num_embeddings} units but this model has "
                            f"{info.n_units} (tokenizer {kind!r}); vocoders fitting it: "
                            f"{', '.join(fitting) or 'none'}")
        return vocoder
    raise SlamError(f"unknown vocoder {name!r}: use hifigan, melinv, a HiFi-GAN .pt file or its folder")
