"""Published artifacts: sha256 pins, the cache, offline errors naming the URL, and the km500 claim check
(file sha256 for the .bin, centroid hash for re-saved copies), on local stand-ins (no network)."""

from __future__ import annotations

import hashlib

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

from slam.cli import main
from slam.errors import SlamError
from slam.units import published
from slam.units.kmeans import KMeans
from slam.utils import sha256_file


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SLAM_OFFLINE", "1")
    return tmp_path / "cache" / "published"


def fake_km500(path, k=12, dim=32, seed=0):
    """A joblib'd scikit-learn KMeans, the published .bin layout (toy size)."""
    rng = np.random.default_rng(seed)
    sk = SkKMeans(n_clusters=k, n_init=1, random_state=seed).fit(rng.normal(size=(200, dim)))
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(sk, path)
    return path


def test_centroid_hash_is_float32_little_endian_c_order():
    c = np.arange(6, dtype=np.float64).reshape(2, 3)
    # hand-built bytes: 0.0, 1.0, ... 5.0 as IEEE float32, little-endian, row by row
    raw = b"".join(np.array([v], "<f4").tobytes() for v in (0, 1, 2, 3, 4, 5))
    assert published.centroid_hash(c) == hashlib.sha256(raw).hexdigest()
    assert published.centroid_hash(np.asfortranarray(c.astype(">f4"))) == hashlib.sha256(raw).hexdigest()


def test_fetch_offline_names_the_url_and_checks_the_sha(cache):
    with pytest.raises(SlamError, match=r"not in .*cache/published and downloads are off \(offline\); fetch "
                                        r"https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/"
                                        r"mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin by hand"):
        published.fetch(published.KM500)
    cache.mkdir(parents=True)
    (cache / published.KM500).write_bytes(b"a truncated download")
    with pytest.raises(SlamError, match=r"sha256 [0-9a-f]{64} is not the published .*km500.bin \(sha256 03cc04a9"):
        published.fetch(published.KM500)
    with pytest.raises(SlamError, match="not a published file"):
        published.fetch("something-else.bin")


def test_fetch_failed_download_names_the_url(cache, monkeypatch):
    monkeypatch.delenv("SLAM_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(url, filename):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(published.urllib.request, "urlretrieve", no_network)
    with pytest.raises(SlamError, match=r"cannot download https://dl.fbaipublicfiles.com/.*hifigan_lj_mhubert_base_"
                                        r"25hz.pt \(OSError: Network is unreachable\); fetch .* by hand"):
        published.fetch(published.VOCODER)
    assert not list(cache.glob("*.part"))

    def wrong_file(url, filename):  # a download that is not the pinned file is not kept
        open(filename, "wb").write(b"an error page")

    monkeypatch.setattr(published.urllib.request, "urlretrieve", wrong_file)
    with pytest.raises(SlamError, match="is not the published"):
        published.fetch(published.VOCODER)
    assert not (cache / published.VOCODER).exists() and not list(cache.glob("*.part"))


def test_km500_check(cache, tmp_path, monkeypatch):
    """Pinned .bin -> pass (centroid hash remembered); its .npz copy -> pass by centroid hash; another k-means
    with the same shape -> refused, naming both hashes."""
    real = fake_km500(cache / published.KM500, seed=0)
    monkeypatch.setitem(published.SHA256, published.KM500, sha256_file(real))
    km = KMeans.load(real)
    h = published.require_published_kmeans(km)
    assert h == published.centroid_hash(km.centroids)
    assert (cache / (published.KM500 + ".centroids.sha256")).read_text().strip() == h

    # a re-saved copy (slam's .npz): same centroids -> passes on the centroid hash alone
    KMeans(km.centroids).save(tmp_path / "copy.npz")
    assert published.require_published_kmeans(KMeans.load(tmp_path / "copy.npz")) == h
    # ... even with the .bin gone, from the remembered hash
    real.unlink()
    assert published.require_published_kmeans(KMeans.load(tmp_path / "copy.npz")) == h

    other = KMeans.load(fake_km500(tmp_path / "other" / published.KM500, seed=1))
    with pytest.raises(SlamError, match=rf"is not the published k-means .*file sha256 [0-9a-f]{{64}} vs the "
                                        rf"published {sha256_file(tmp_path / 'copy.npz')[:0]}.*centroid hash "
                                        rf"[0-9a-f]{{64}} \(12 x 32\) vs the published {h}"):
        published.require_published_kmeans(other)
    moved = KMeans(km.centroids + 1e-3)
    moved.source = str(tmp_path / "moved.npz")
    with pytest.raises(SlamError, match=f"centroid hash .* vs the published {h}"):
        published.require_published_kmeans(moved)
    with pytest.raises(SlamError, match="standardises"):
        published.require_published_kmeans(KMeans(km.centroids, mean=np.zeros(32), std=np.ones(32)))


def test_km500_check_offline_without_the_bin_names_the_url(cache, tmp_path):
    KMeans(np.ones((4, 3), np.float32)).save(tmp_path / "km.npz")
    with pytest.raises(SlamError, match=r"km.npz: cannot check it against the published .*km500.bin .*fetch "
                                        r"https://dl.fbaipublicfiles.com/.*km500.bin by hand"):
        published.require_published_kmeans(KMeans.load(tmp_path / "km.npz"))


def test_convert_refuses_another_kmeans_for_the_published_tokenizer(cache, tmp_path, monkeypatch, capsys):
    """`slam convert --tokenizer hubert:.../mhubert-base-25hz@L:KM` claims the published tokenizer: a k-means
    that is not km500 is refused (exit 2, both hashes named); the pinned one converts; --own-kmeans opts out."""
    from test_model import TINY, write_slamkit_folder
    from test_units_hubert import tiny_hubert

    from slam.model import random_init

    hub = tmp_path / "hub" / "mhubert-base-25hz"  # a local folder named like the published model
    tiny_hubert().save_pretrained(hub)
    model, _ = random_init("qwen2", n_units=12, overrides=TINY["qwen2"], seed=0)
    write_slamkit_folder(model, tmp_path / "slamkit")
    real = fake_km500(cache / published.KM500, seed=0)
    wrong = fake_km500(tmp_path / "mine" / "km.bin", seed=1)
    monkeypatch.setitem(published.SHA256, published.KM500, sha256_file(real))
    args = ["convert", str(tmp_path / "slamkit"), "--out"]
    assert main(args + [str(tmp_path / "a"), "--tokenizer", f"hubert:{hub}@2:{wrong}"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "km.bin is not the published k-means" in err and "centroid hash" in err and "sha256" in err
    assert main(args + [str(tmp_path / "b"), "--tokenizer", f"hubert:{hub}@2:{real}"]) == 0
    assert main(args + [str(tmp_path / "c"), "--tokenizer", f"hubert:{hub}@2:{wrong}"]) == 2
    assert main(args + [str(tmp_path / "d"), "--tokenizer", f"hubert:{hub}@2:{wrong}", "--own-kmeans"]) == 0
    # a HuBERT that is not the published one is the user's own tokenizer: no claim, no check
    own = tmp_path / "hub" / "my-hubert"
    tiny_hubert().save_pretrained(own)
    assert main(args + [str(tmp_path / "e"), "--tokenizer", f"hubert:{own}@2:{wrong}"]) == 0


def test_published_vocoder_refuses_other_units(cache, tmp_path, monkeypatch):
    """The published LJ vocoder speaks km500 units only: a model whose k-means is another is refused before
    vocoding; the user's own vocoder (published=False) is not checked."""
    from types import SimpleNamespace

    from slam.vocoder.hifigan import require_published_units

    real = fake_km500(cache / published.KM500, seed=0)
    monkeypatch.setitem(published.SHA256, published.KM500, sha256_file(real))
    voc = SimpleNamespace(published=True)
    require_published_units(voc, SimpleNamespace(kmeans=KMeans.load(real)))
    other = SimpleNamespace(kmeans=KMeans.load(fake_km500(tmp_path / "o.bin", seed=2)))
    with pytest.raises(SlamError, match="o.bin is not the published k-means the published LJ HiFi-GAN needs"):
        require_published_units(voc, other)
    require_published_units(SimpleNamespace(published=False), other)
    require_published_units(voc, SimpleNamespace())  # a mel tokenizer or a stand-in without k-means
