"""`slam fit-kmeans AUDIO --tokenizer mel|hubert --units K --out FILE.npz`: the k-means of a tokenizer.

    slam fit-kmeans corpus/ --tokenizer mel --units 200 --out km200.npz
    slam fit-kmeans corpus/ --tokenizer hubert --model slprl/mhubert-base-25hz --layer 11 --units 500 \\
        --out km500.npz
    slam tokenize corpus/ --tokenizer km200.npz --out units/      # the .npz is a complete tokenizer spec

Frames are sampled from files in a seeded random order, at most `--max-frames` in all and an even share per
file (so one long file cannot dominate), then clustered by scikit-learn MiniBatchKMeans. The mel tokenizer
standardises frames (mean/std stored in the file); HuBERT features are clustered raw, as the published
k-means were. Same audio + same seed -> the same file.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from slam.audio import find_audio, load_audio, load_audio_bytes
from slam.errors import AudioError, SlamError
from slam.units.hf import HUB_PREFIX, is_hf_source, open_hf
from slam.units.kmeans import fit_kmeans
from slam.units.melkmeans import MelFeatures, MelParams
from slam.utils import format_duration


def fit_audio_kmeans(audio: str | Path, tokenizer: str, n_units: int, out: str | Path, *,
                     model: str = "slprl/mhubert-base-25hz", layer: int = 11, max_frames: int = 500_000,
                     seed: int = 0, features: str = "logmel", n_mels: int = 80, batch_size: int = 16,
                     device: str | None = None, split: str | None = None, audio_column: str | None = None) -> Path:
    """Fit the k-means of a `mel` or `hubert` tokenizer on frames sampled from the audio of `audio` (a folder,
    manifest or Hugging Face datasets folder, as `slam tokenize` reads them) and save it as `out` (.npz);
    prints a one-paragraph summary and returns `out`."""
    out = Path(out)
    if out.suffix != ".npz":
        raise SlamError(f"--out {out}: the k-means file must end in .npz")
    if n_units < 2 or n_units > 65535:
        raise SlamError("--units must lie in 2..65535 (units are stored as uint16)")
    if is_hf_source(audio):
        if str(audio).startswith(HUB_PREFIX):
            raise SlamError(f"{audio}: fit-kmeans samples rows at random, which a streamed hub dataset cannot do; "
                            f"save it with `datasets.load_dataset(...).save_to_disk(DIR)` and fit on DIR")
        src = open_hf(audio, split, audio_column)
        n_items = len(src)

        def load(idx: int) -> np.ndarray:
            e = src.entry(int(idx))
            if e.error is not None or e.payload is None:
                raise AudioError(e.error or f"{e.source}: no audio")
            return load_audio_bytes(e.payload, e.source) if isinstance(e.payload, bytes) else load_audio(e.payload)
    else:
        if split is not None or audio_column is not None:
            raise SlamError(f"--split / --audio-column: {audio} is not a Hugging Face dataset folder")
        items = find_audio(audio)
        n_items = len(items)

        def load(idx: int) -> np.ndarray:
            return load_audio(items[idx][1])
    if not n_items:
        raise SlamError(f"{audio}: no audio files found")
    order = np.random.default_rng(seed).permutation(n_items)
    per_file = max(1, math.ceil(2 * max_frames / n_items))  # 2x the even share: short files exist
    rng = np.random.default_rng(seed + 1)

    if tokenizer == "mel":
        mel = MelFeatures(MelParams(features=features, n_mels=n_mels))
        params = {"kind": "mel", **mel.params.to_dict()}

        def featurise(wavs: list[np.ndarray]) -> list[np.ndarray]:
            return [mel(w) for w in wavs]
        batch = 1
    else:
        from slam.units.hubert import HubertFeatures
        from slam.units.tokenizer import _model_ref

        ref, _ = _model_ref(model, Path.cwd())
        enc = HubertFeatures(ref, layer, device=device)
        params = {"kind": "hubert", "model": ref, "layer": layer}

        def featurise(wavs: list[np.ndarray]) -> list[np.ndarray]:
            ok = [w for w in wavs if enc.n_frames(len(w)) >= 1]
            return [f.cpu().numpy() for f in enc(ok, batch_size=batch_size)] if ok else []
        batch = max(1, batch_size)

    t0 = time.perf_counter()
    taken: list[np.ndarray] = []
    n_frames = n_files = n_bad = 0
    seconds = 0.0
    # files are the unit of work (the frame total is unknown until decoded); stops early at --max-frames
    bar = tqdm(total=n_items, desc=f"sample frames ({tokenizer})", unit="file", dynamic_ncols=True)
    pending: list[np.ndarray] = []

    def consume() -> None:
        nonlocal n_frames
        for f in featurise(pending):
            if len(f) > per_file:
                f = f[np.sort(rng.choice(len(f), per_file, replace=False))]
            f = f[: max_frames - n_frames]
            taken.append(f.astype(np.float32))
            n_frames += len(f)
        bar.update(len(pending))
        bar.set_postfix_str(f"{n_frames:,}/{max_frames:,} frames", refresh=False)
        pending.clear()

    for idx in order:
        if n_frames >= max_frames:
            break
        try:
            wav = load(idx)
        except AudioError as e:
            n_bad += 1
            bar.write(f"skipped: {e}")
            bar.update(1)
            continue
        pending.append(wav)
        n_files += 1
        seconds += len(wav) / 16000
        if len(pending) >= batch:
            consume()
    if pending:
        consume()
    bar.close()
    if n_frames < n_units:
        raise SlamError(f"{audio}: only {n_frames} frames from {n_files} files, fewer than --units "
                        f"{n_units}; give more audio")
    frames = np.concatenate(taken)
    t1 = time.perf_counter()
    print(f"fitting {n_units} clusters on {n_frames:,} frames of dim {frames.shape[1]} ...", flush=True)
    km = fit_kmeans(frames, n_units, seed=seed, standardise=tokenizer == "mel", params=params)
    km.save(out)
    units = km.predict(frames)
    spec = f"mel:{out}" if tokenizer == "mel" else f"hubert:{params['model']}@{params['layer']}:{out}"
    used = int(np.unique(units).size)
    t2 = time.perf_counter()
    print(f"Fitted {n_units}-means for the {tokenizer} tokenizer on {n_frames:,} frames sampled from "
          f"{n_files} files ({seconds / 3600:.2f} h; {n_bad} unreadable files skipped) in "
          f"{format_duration(t2 - t0)} (features {format_duration(t1 - t0)}, clustering "
          f"{format_duration(t2 - t1)}); {used} of {n_units} units used on the sample. Wrote {out}; use "
          f"it as --tokenizer {spec} (the file alone also works: it names its features).")
    return out
