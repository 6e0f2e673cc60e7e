"""Unit HiFi-GAN with a duration predictor ("CodeHiFiGAN" of speech-resynthesis / textlesslib): units -> 16 kHz.

This is the vocoder the paper uses for GenPPL: the LJSpeech voice trained on mHuBERT-base-25Hz k-means-500
units (TWIST release). Architecture, as in the published generator:

    units [T] --dict (Embedding K x 128)--> [128, T]
      --(deduplicated units) dur_predictor: conv(k3)+ReLU, LayerNorm, conv(k3, padding 1)+ReLU, LayerNorm,
        Linear -> log(1 + d); durations = clamp(round(exp(pred) - 1), min 1); each unit repeated d frames
      --conv_pre (k7)--> [512, T']
      --for each upsampling stage i: LeakyReLU 0.1, ConvTranspose1d (stride u_i), then the mean of
        len(resblock_kernel_sizes) residual blocks (3 dilated convs, each followed by a plain conv)
      --LeakyReLU 0.01, conv_post (k7, 1 channel), tanh--> [T' * prod(upsample_rates)] samples

prod(upsample_rates) = 640 samples per unit frame = 25 Hz at 16 kHz. The published checkpoint stores every
conv with weight normalisation (`weight_g`, `weight_v`); the published loader removes it after loading, so
here the convs are plain and the loader folds `w = g * v / |v|` (norm over all dims but 0, as
`torch.nn.utils.weight_norm(dim=0)` does) while converting. Inference only: dropout in the duration predictor
is never applied.

The duration predictor is built whenever the config has `dur_predictor_params` (as textlesslib and slamkit
do; `dur_prediction_weight` is only a training loss weight), its input size from `encoder_embed_dim`.

The checkpoint is a pickle: it is read with `torch.load(weights_only=True)` after its sha256 matches the pin,
and converted once to safetensors next to it, which later loads read instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slam.errors import SlamError
from slam.units import published
from slam.utils import sha256_file

# The TWIST release: the checkpoint and config published beside the mHuBERT-25Hz tokenizer (pins and URLs
# live in slam.units.published, with the k-means they belong to).
PUBLISHED_BASE_URL = published.BASE_URL
PUBLISHED_CHECKPOINT = published.VOCODER
PUBLISHED_CONFIG = published.VOCODER_CONFIG
PUBLISHED_SHA256 = {k: published.SHA256[k] for k in (PUBLISHED_CHECKPOINT, PUBLISHED_CONFIG)}
LRELU_SLOPE = 0.1


@dataclass
class HifiGanConfig:
    """The fields of the published config JSON that shape the generator (others are training settings)."""

    num_embeddings: int = 500
    embedding_dim: int = 128
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 2, 2, 2])
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 4, 4, 4])
    upsample_initial_channel: int = 512
    resblock: str = "1"
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = field(default_factory=lambda: [[1, 3, 5]] * 3)
    duration_predictor: bool = True
    dur_in: int = 128
    dur_hidden: int = 128
    dur_kernel: int = 3
    sampling_rate: int = 16000

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates)

    @classmethod
    def from_published(cls, cfg: dict[str, Any]) -> "HifiGanConfig":
        """Read a speech-resynthesis / textlesslib config dict; refuse the variants this generator lacks."""
        if cfg.get("f0") or cfg.get("multispkr") or cfg.get("lambda_commit") or cfg.get("f0_quantizer_path"):
            raise SlamError("this HiFi-GAN config conditions on f0 / speaker / a VQ encoder; only the unit-only "
                            "generator (as published for mHuBERT-25Hz) is supported")
        if str(cfg.get("resblock", "1")) != "1":
            raise SlamError(f"HiFi-GAN resblock type {cfg.get('resblock')!r} is not supported (only '1')")
        try:
            dp = cfg.get("dur_predictor_params") or {}
            in_dim = cfg.get("model_in_dim", cfg["embedding_dim"])
            if in_dim != cfg["embedding_dim"]:
                raise SlamError(f"model_in_dim {in_dim} != embedding_dim {cfg['embedding_dim']}: not a unit-only "
                                "generator")
            # textlesslib and slamkit build the predictor whenever `dur_predictor_params` is present (not on
            # `dur_prediction_weight`, a training loss weight), sized by its own fields
            dur_in = int(dp["encoder_embed_dim"]) if dp else int(cfg["embedding_dim"])
            if dp and dur_in != int(cfg["embedding_dim"]):
                raise SlamError(f"dur_predictor_params.encoder_embed_dim {dur_in} != embedding_dim "
                                f"{cfg['embedding_dim']}: the duration predictor reads the unit embeddings")
            return cls(
                num_embeddings=int(cfg["num_embeddings"]),
                embedding_dim=int(cfg["embedding_dim"]),
                upsample_rates=[int(x) for x in cfg["upsample_rates"]],
                upsample_kernel_sizes=[int(x) for x in cfg["upsample_kernel_sizes"]],
                upsample_initial_channel=int(cfg["upsample_initial_channel"]),
                resblock_kernel_sizes=[int(x) for x in cfg["resblock_kernel_sizes"]],
                resblock_dilation_sizes=[[int(d) for d in ds] for ds in cfg["resblock_dilation_sizes"]],
                duration_predictor=bool(dp),
                dur_in=dur_in,
                dur_hidden=int(dp["var_pred_hidden_dim"]) if dp else 128,
                dur_kernel=int(dp["var_pred_kernel_size"]) if dp else 3,
                sampling_rate=int(cfg.get("sampling_rate", 16000)),
            )
        except KeyError as e:
            raise SlamError(f"HiFi-GAN config lacks the field {e.args[0]!r}") from None


def _padding(kernel: int, dilation: int) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Three (dilated conv, conv) pairs with residual connections (HiFi-GAN's ResBlock1)."""

    def __init__(self, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d, padding=_padding(kernel, d))
                                    for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=_padding(kernel, 1))
                                    for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class DurationPredictor(nn.Module):
    """Predicts log(1 + frames) per deduplicated unit. Key names follow the published `dur_predictor.*`."""

    def __init__(self, dim: int, hidden: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv1d(dim, hidden, kernel, padding=(kernel - 1) // 2), nn.ReLU())
        self.ln1 = nn.LayerNorm(hidden)
        # padding 1 (not (kernel-1)//2) as published: identical for the published kernel 3
        self.conv2 = nn.Sequential(nn.Conv1d(hidden, hidden, kernel, padding=1), nn.ReLU())
        self.ln2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, T]
        x = self.ln1(self.conv1(x.transpose(1, 2)).transpose(1, 2))
        x = self.ln2(self.conv2(x.transpose(1, 2)).transpose(1, 2))
        return self.proj(x).squeeze(-1)


class CodeHiFiGAN(nn.Module):
    """Units -> waveform. Call `vocode(units, durations=None)`; `forward` takes already-expanded frames."""

    def __init__(self, cfg: HifiGanConfig):
        super().__init__()
        self.cfg = cfg
        self.published = False  # True when loaded from the pinned published files
        self.dict = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim)
        self.dur_predictor = (DurationPredictor(cfg.dur_in, cfg.dur_hidden, cfg.dur_kernel)
                              if cfg.duration_predictor else None)
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.embedding_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2))
            for kr, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(c_out, kr, dil))
        self.conv_post = nn.Conv1d(ch // 2 ** len(cfg.upsample_rates), 1, 7, padding=3)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sampling_rate

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.samples_per_frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, frames] embeddings -> [B, frames * 640] samples."""
        x = self.conv_pre(x)
        n = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))  # default slope 0.01 here, as published
        return x.squeeze(1)

    def predict_durations(self, units: torch.Tensor) -> torch.Tensor:
        """[T] units -> [T] frames per unit (>= 1)."""
        if self.dur_predictor is None:
            raise SlamError("this HiFi-GAN has no duration predictor; give durations (or non-deduplicated units)")
        log_d = self.dur_predictor(self.dict(units)[None])[0]
        return torch.clamp(torch.round(torch.exp(log_d) - 1).long(), min=1)

    @torch.inference_mode()
    def vocode(self, units: Any, durations: Any | None = None) -> np.ndarray:
        """Units 0..K-1 (one utterance) -> float32 waveform at `sample_rate`.

        durations: frames per unit. Given values are used as they are (e.g. a prompt's true timing from the
        tokenizer); None or 0 entries (deduplicated units with unknown timing, such as generated ones) get
        the duration predictor's frames, or 1 frame without a predictor. Output length = sum(durations) *
        samples_per_frame (640 for the published vocoder).
        """
        dev = self.dict.weight.device
        u = torch.as_tensor(np.asarray(units, dtype=np.int64), device=dev)
        if u.ndim != 1:
            raise SlamError(f"vocode takes one utterance of units [T]; got shape {tuple(u.shape)}")
        if u.numel() == 0:
            return np.zeros(0, dtype=np.float32)
        if int(u.min()) < 0 or int(u.max()) >= self.cfg.num_embeddings:
            raise SlamError(f"units must lie in [0, {self.cfg.num_embeddings}) for this vocoder; got "
                            f"[{int(u.min())}, {int(u.max())}]")
        d = torch.zeros_like(u)
        if durations is not None:
            d = torch.as_tensor(np.asarray(durations, dtype=np.int64), device=dev)
            if d.shape != u.shape or int(d.min()) < 0:
                raise SlamError("durations must be one non-negative count per unit")
        unknown = d == 0
        if bool(unknown.any()):
            fill = self.predict_durations(u) if self.dur_predictor is not None else torch.ones_like(u)
            d = torch.where(unknown, fill, d)
        x = self.dict(torch.repeat_interleave(u, d))  # [frames, C]
        return self(x.T[None].to(self.conv_pre.weight.dtype))[0].float().cpu().numpy()


# --- loading -------------------------------------------------------------------------------------------
def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`X.weight_g` + `X.weight_v` -> `X.weight = g * v / |v|` (the norm over every dim but 0)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            base = key[: -len(".weight_v")]
            g = state.get(base + ".weight_g")
            if g is None:
                raise SlamError(f"checkpoint has {key} but no {base}.weight_g")
            v = value.float()
            norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
            out[base + ".weight"] = (g.float().view_as(norm) * v / norm).to(value.dtype)
        else:
            out[key] = value
    return out


def load_state(model: CodeHiFiGAN, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a generator state dict (weight-normed or folded) strictly, naming what does not fit."""
    state = fold_weight_norm(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {bad_shape[:2]})")
        raise SlamError(f"{source} does not fit this HiFi-GAN config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def cache_dir() -> Path:
    """Where the published vocoder files are cached (shared with the published k-means)."""
    return published.cache_dir()


def load_hifigan(source: str | Path | None = None, device: str | torch.device = "cpu") -> CodeHiFiGAN:
    """The published mHuBERT-25Hz km500 LJ vocoder, or a compatible one.

    source: None -> the pinned published files from the cache folder (downloaded there if online);
    a folder -> the published file names in it (sha256-pinned); a `.pt` file -> that checkpoint with its
    `*_config.json` (or `config.json`) beside it, not pinned (your own vocoder).
    """
    if source is None or Path(source).is_dir():
        folder = cache_dir() if source is None else Path(source)
        ckpt, cfg_path = published.fetch(PUBLISHED_CHECKPOINT, folder), published.fetch(PUBLISHED_CONFIG, folder)
        is_published = True
    else:
        ckpt, is_published = Path(source), False
        if not ckpt.exists():
            raise SlamError(f"vocoder checkpoint {str(ckpt)!r} does not exist")
        candidates = [ckpt.with_name(ckpt.stem + "_config.json"), ckpt.with_name("config.json")]
        cfg_path = next((c for c in candidates if c.exists()), None)
        if cfg_path is None:
            raise SlamError(f"no config beside {ckpt} (looked for {[c.name for c in candidates]})")
    cfg = HifiGanConfig.from_published(json.loads(Path(cfg_path).read_text()))
    model = CodeHiFiGAN(cfg)
    converted = ckpt.with_suffix(".safetensors")
    if converted.exists() and converted.stat().st_mtime >= ckpt.stat().st_mtime:
        from safetensors.torch import load_file

        load_state(model, load_file(converted), str(converted))
    else:
        try:
            raw = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a pickle with objects weights_only refuses, or a corrupt file
            raise SlamError(f"cannot read {ckpt} as a weights-only checkpoint: {e}") from None
        state = raw.get("generator", raw) if isinstance(raw, dict) else None
        if not isinstance(state, dict):
            raise SlamError(f"{ckpt}: expected a dict with the generator state under 'generator'")
        load_state(model, state, str(ckpt))
        try:  # convert once; a read-only folder just means converting again next time
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(converted),
                      metadata={"source": ckpt.name, "source_sha256": sha256_file(ckpt)})
        except OSError:
            pass
    # the published files speak the published km500 units only (checked against the model's k-means by
    # require_published_units before vocoding)
    model.published = is_published
    return model.eval().to(device)


def require_published_units(vocoder: Any, tokenizer: Any) -> None:
    """The published LJ vocoder was trained on the published km500 units: refuse another k-means (its
    500 units would be spoken as the wrong sounds), naming both hashes. Own vocoders are not checked."""
    if getattr(vocoder, "published", False) and getattr(tokenizer, "kmeans", None) is not None:
        published.require_published_kmeans(tokenizer.kmeans, what="the published LJ HiFi-GAN")
