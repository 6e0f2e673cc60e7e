"""A weight-free vocoder for the mel tokenizer: unit -> its k-means centroid -> log-mel -> Griffin-Lim.

    voc = load_melinv(info, model_dir)        # reads the tokenizer's k-means .npz named in slam.json
    wav = voc.vocode(units, durations)        # float32, 16 kHz, sum(durations) * 640 samples

Every step inverts one step of slam.units.melkmeans, using only numbers stored in the k-means file:
    standardised frame = centroid[unit]; log-mel = frame * std + mean   (MFCC features: times the
    pseudo-inverse of the DCT first, which restores the smooth spectral envelope of the first n_mfcc terms)
    mel power = exp(log-mel) - log_floor, clipped at 0
    power spectrum = pseudo-inverse of the mel filterbank applied to it, clipped at 0 (the filterbank's
        overlapping triangles have full row rank, so the inverse is the least-norm spectrum with that mel)
    waveform = fast Griffin-Lim (momentum 0.99, 32 iterations) with the tokenizer's own framing: periodic
        Hann window of n_fft, frame t centred on sample t * hop + hop / 2
Each unit is held for its duration in frames; units without one (durations None or 0: generated units) get
the mean duration of the units that have one, else `default_duration` (2 frames: 80 ms, ~12.5 units/s,
close to the ~1.5-2 frames per unit of deduplicated 25 Hz speech).

It is a centroid per 40 ms with no pitch model: the output is buzzy and hard to understand, but it is
speech-shaped and needs no download, which closes the demo loop from speech to speech.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slam.errors import SlamError
from slam.tokens import SlamInfo
from slam.units.kmeans import KMeans
from slam.units.melkmeans import MelParams, dct_matrix, mel_filterbank


class MelInverter:
    def __init__(self, kmeans: KMeans, params: MelParams, n_iter: int = 32, default_duration: int = 2,
                 momentum: float = 0.99, seed: int = 0):
        self.kmeans, self.params = kmeans, params
        self.n_iter, self.default_duration, self.momentum, self.seed = n_iter, default_duration, momentum, seed
        c = kmeans.centroids.astype(np.float64)
        if kmeans.std is not None:
            c = c * kmeans.std
        if kmeans.mean is not None:
            c = c + kmeans.mean
        if params.features == "mfcc":
            c = c @ np.linalg.pinv(dct_matrix(params.n_mels, params.n_mfcc).astype(np.float64))
        # per unit: the magnitude spectrum [K, n_fft // 2 + 1] its centroid stands for
        mel_power = np.clip(np.exp(c) - params.log_floor, 0.0, None)
        power = np.clip(mel_power @ np.linalg.pinv(mel_filterbank(params).astype(np.float64)).T, 0.0, None)
        self.magnitude = np.sqrt(power).astype(np.float32)
        n = params.n_fft
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)

    @property
    def sample_rate(self) -> int:
        return self.params.sample_rate

    @property
    def samples_per_frame(self) -> int:
        return self.params.hop_length

    def _durations(self, n: int, durations: Any | None) -> np.ndarray:
        d = np.zeros(n, np.int64) if durations is None else np.asarray(durations, dtype=np.int64)
        if d.shape != (n,) or (d < 0).any():
            raise SlamError("durations must be one non-negative count per unit")
        known = d[d > 0]
        fill = max(1, int(round(known.mean()))) if known.size else self.default_duration
        return np.where(d > 0, d, fill)

    def vocode(self, units: Any, durations: Any | None = None) -> np.ndarray:
        u = np.asarray(units, dtype=np.int64)
        if u.ndim != 1:
            raise SlamError(f"vocode takes one utterance of units [T]; got shape {u.shape}")
        if u.size == 0:
            return np.zeros(0, dtype=np.float32)
        if u.min() < 0 or u.max() >= self.kmeans.n_units:
            raise SlamError(f"units must lie in [0, {self.kmeans.n_units}) for this vocoder")
        mag = self.magnitude[np.repeat(u, self._durations(u.size, durations))]  # [T, bins]
        return self.griffin_lim(mag)

    # --- STFT with the tokenizer's framing ---------------------------------------------------------------
    def _stft(self, x: np.ndarray, t: int) -> np.ndarray:
        p = self.params
        frames = np.lib.stride_tricks.sliding_window_view(x, p.n_fft)[::p.hop_length][:t]
        return np.fft.rfft(frames * self.window, axis=1)

    def _istft(self, spec: np.ndarray, length: int) -> np.ndarray:
        """Weighted overlap-add (least-squares inverse of `_stft`) into a buffer of `length` samples."""
        p = self.params
        frames = np.fft.irfft(spec, n=p.n_fft, axis=1) * self.window
        out = np.zeros(length, np.float64)
        norm = np.zeros(length, np.float64)
        w2 = self.window.astype(np.float64) ** 2
        for i in range(frames.shape[0]):
            s = i * p.hop_length
            out[s:s + p.n_fft] += frames[i]
            norm[s:s + p.n_fft] += w2
        return out / np.maximum(norm, 1e-8)

    def griffin_lim(self, magnitude: np.ndarray) -> np.ndarray:
        """[T, bins] magnitudes -> T * hop samples (frame t centred on t * hop + hop / 2)."""
        p = self.params
        t = magnitude.shape[0]
        length = (t - 1) * p.hop_length + p.n_fft
        left = p.n_fft // 2 - p.hop_length // 2  # buffer sample `left` is output sample 0
        rng = np.random.default_rng(self.seed)
        angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
        prev = np.zeros_like(angles)
        for _ in range(self.n_iter):
            x = self._istft(magnitude * angles, length)
            rebuilt = self._stft(x, t)
            # fast Griffin-Lim (Perraudin et al. 2013): extrapolate the phase estimate with momentum
            accel = rebuilt - self.momentum / (1 + self.momentum) * prev
            prev = rebuilt
            angles = accel / np.maximum(np.abs(accel), 1e-8)
        x = self._istft(magnitude * angles, length)[left:left + t * p.hop_length]
        peak = np.abs(x).max()
        if peak > 0.99:  # keep the file free of clipping; the level carries no information here
            x = x * (0.99 / peak)
        return x.astype(np.float32)


def load_melinv(info: SlamInfo, model_dir: str | Path, **kwargs: Any) -> MelInverter:
    spec = info.tokenizer or {}
    if spec.get("kind") != "mel" or "kmeans" not in spec:
        raise SlamError(f"{model_dir}: the melinv vocoder needs a mel tokenizer with its k-means file in "
                        f"slam.json; found {spec or 'none'}")
    path = Path(spec["kmeans"]).expanduser()
    km = KMeans.load(path if path.is_absolute() else Path(model_dir) / path)
    params = MelParams.from_dict({k: v for k, v in km.params.items() if k != "kind"})
    if km.n_units != info.n_units:
        raise SlamError(f"{km.source}: {km.n_units} centroids but the model has {info.n_units} units")
    return MelInverter(km, params, **kwargs)
