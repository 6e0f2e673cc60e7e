"""The published speech tokenizer and vocoder files (TWIST release), pinned by sha256, fetched and cached.

    path = fetch(KM500)                        # cache hit (sha256 checked), or a download when online
    require_published_kmeans(km)               # refuse a k-means that is not the published km500

Files (all under BASE_URL, the TWIST `speech_tokenizer/` folder):
    mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin   k-means 500 (joblib pickle of a scikit-learn KMeans)
    hifigan_lj_mhubert_base_25hz.pt / _config.json         the LJSpeech unit HiFi-GAN with duration predictor
The HuBERT weights come from the model hub (`slprl/mhubert-base-25hz`), not from here.

Cache: $SLAM_CACHE/published (default ~/.cache/slam/published). A file is taken from the cache only when its
sha256 matches the pin; otherwise it is downloaded (when online) to `NAME.part`, checked, then moved in.
Offline (SLAM_OFFLINE=1 or HF_HUB_OFFLINE=1, or the download fails) the error names the URL to fetch by hand
and the folder to put it in.

The published k-means check: a `.bin` passes when its file sha256 equals the pin. Copies re-saved in
another format (slam's `.npz`, a `.npy`, a re-pickled `.bin`) pass when their centroid hash equals the
published one, where the centroid hash is the sha256 of the centroids as float32, little-endian, C order
(500 x 768 x 4 = 1,536,000 bytes). That hash is computed from the pinned `.bin` the first time it is read
and kept beside it in the cache (`NAME.centroids.sha256`), so the `.bin` is needed once, not every time.
Any other k-means is refused with both hashes named: a 500-unit k-means fitted on other data still yields
500 units, but they do not mean what the published model's units mean, and pair scores come out near chance.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from slam.errors import SlamError
from slam.units.kmeans import KMeans
from slam.utils import sha256_file

BASE_URL = "https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/"
KM500 = "mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin"
VOCODER = "hifigan_lj_mhubert_base_25hz.pt"
VOCODER_CONFIG = "hifigan_lj_mhubert_base_25hz_config.json"
MHUBERT_FAIRSEQ = "mhubert_base_25hz_cp_mls_cv_sp_fisher.pt"
SHA256 = {
    KM500: "03cc04a9c24fec4285e73e709c485756d8f116aa8e724eac555de6a7cf8d28ad",
    VOCODER: "d88224e95c501e2cd59a6e4014753169cfe060fb7ade3cc0da03c809fef73b79",
    VOCODER_CONFIG: "116dc39be4970cd393e562acd0a0ec70a86aaba7e9ca469b8b836cb3fe46afc7",
    MHUBERT_FAIRSEQ: "edf0f5be2581a568a236aeb2781a5607c5af25806e12f40f7f2391e861fe3cf0",
}
# The hub id of the published mHuBERT-25Hz (its framing is checked in slam.units.hubert).
MHUBERT_HUB_ID = "slprl/mhubert-base-25hz"
# slamkit pads every wave by 40 samples on each side before HuBERT (F.pad(wav, (40, 40))).
SLAMKIT_PAD = 40


def url(name: str) -> str:
    return BASE_URL + name


def cache_dir() -> Path:
    return Path(os.environ.get("SLAM_CACHE", Path.home() / ".cache" / "slam")) / "published"


def offline() -> bool:
    return os.environ.get("SLAM_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"


def _pin(name: str) -> str:
    if name not in SHA256:
        raise SlamError(f"{name!r} is not a published file slam knows (known: {', '.join(sorted(SHA256))})")
    return SHA256[name]


def verify(path: str | Path, name: str) -> Path:
    """`path` must hold the published file `name` (sha256 equal to the pin); a one-line error names both."""
    path = Path(path)
    got, want = sha256_file(path), _pin(name)
    if got != want:
        raise SlamError(f"{path}: sha256 {got} is not the published {name} (sha256 {want}, {url(name)}); "
                        f"a different or corrupt file")
    return path


def fetch(name: str, folder: str | Path | None = None) -> Path:
    """The published file `name`, sha256-checked: from `folder` (default: the cache) when there, else
    downloaded into it when online. Offline, the error names the URL to fetch by hand."""
    folder = Path(folder) if folder is not None else cache_dir()
    path = folder / name
    if path.exists():
        return verify(path, name)
    by_hand = f"fetch {url(name)} by hand into {folder}/ (sha256 {_pin(name)})"
    if offline():
        raise SlamError(f"the published file {name} is not in {folder} and downloads are off (offline); {by_hand}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(name + ".part")
    try:
        urllib.request.urlretrieve(url(name), tmp)
    except (OSError, urllib.error.URLError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise SlamError(f"cannot download {url(name)} ({type(e).__name__}: {e}); {by_hand}") from None
    try:
        verify(tmp, name)
    except SlamError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def centroid_hash(centroids: Any) -> str:
    """sha256 of the centroids as float32, little-endian, C order (format-independent)."""
    c = np.ascontiguousarray(np.asarray(centroids), dtype="<f4")
    return hashlib.sha256(c.tobytes(order="C")).hexdigest()


def published_centroid_hash(folder: str | Path | None = None) -> str:
    """The centroid hash of the published km500: from the side file written when the pinned .bin was first
    read, else from the .bin itself (fetched when online)."""
    folder = Path(folder) if folder is not None else cache_dir()
    side = folder / (KM500 + ".centroids.sha256")
    if side.exists():
        value = side.read_text().strip()
        if len(value) == 64:
            return value
    path = fetch(KM500, folder)
    return _remember(path, KMeans.load(path))


def _remember(path: Path, km: KMeans) -> str:
    """Centroid hash of the verified published .bin, kept beside it (a read-only folder just recomputes)."""
    value = centroid_hash(km.centroids)
    try:
        Path(path).with_name(KM500 + ".centroids.sha256").write_text(value + "\n")
    except OSError:
        pass
    return value


def require_published_kmeans(km: KMeans, what: str = "the published mHuBERT-25Hz tokenizer",
                             folder: str | Path | None = None) -> str:
    """Refuse a k-means that is not the published km500; returns its centroid hash.

    A pickle whose file sha256 is the pin passes at once (and its centroid hash is remembered in the cache);
    any other file passes only when its centroids hash like the published ones."""
    source = Path(km.source) if km.source else None
    if km.mean is not None or km.std is not None:
        raise SlamError(f"{km.source}: {what} clusters raw HuBERT features, but this k-means standardises them "
                        f"(mean/std stored): not the published {KM500}")
    if source is not None and source.is_file() and source.suffix.lower() in (".bin", ".pkl", ".pickle", ".joblib"):
        if sha256_file(source) == SHA256[KM500]:
            value = centroid_hash(km.centroids)
            cache = Path(folder) if folder is not None else cache_dir()
            if not (cache / (KM500 + ".centroids.sha256")).exists():
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    (cache / (KM500 + ".centroids.sha256")).write_text(value + "\n")
                except OSError:
                    pass
            return value
    got = centroid_hash(km.centroids)
    try:
        want = published_centroid_hash(folder)
    except SlamError as e:
        raise SlamError(f"{km.source}: cannot check it against the published {KM500} ({e})") from None
    if got != want:
        file_part = ""
        if source is not None and source.is_file():
            file_part = f"file sha256 {sha256_file(source)} vs the published {SHA256[KM500]}; "
        raise SlamError(f"{km.source} is not the published k-means {what} needs: {file_part}centroid hash "
                        f"{got} ({km.n_units} x {km.dim}) vs the published {want} (500 x 768, {url(KM500)})")
    return got
