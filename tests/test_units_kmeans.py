"""Weight-free mel features, k-means fit/load/apply (incl. the published joblib .bin layout), the tokenizer
interface (specs, hash, save_to), dedup and durations."""

import os
import pickle

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans

from conftest import synth_speechlike
from slam.errors import SlamError
from slam.units.kmeans import KMeans, fit_kmeans
from slam.units.melkmeans import MelFeatures, MelParams, frame_centres, mel_filterbank, mel_to_hz
from slam.units.tokenizer import load_tokenizer, parse_spec, tokenize


@pytest.fixture(scope="module")
def mel_km(tmp_path_factory):
    feats = MelFeatures()
    frames = np.concatenate([feats(synth_speechlike(4.0, seed=s)) for s in range(4)])
    km = fit_kmeans(frames, 24, seed=0, params={"kind": "mel", **MelParams().to_dict()}, n_init=1)
    path = tmp_path_factory.mktemp("km") / "mel24.npz"
    km.save(path)
    return path, frames


def test_mel_frame_count_and_centring():
    p = MelParams()
    f = MelFeatures(p)
    for n in (639, 640, 641, 16000, 16000 + 639):
        assert f(np.zeros(n, np.float32)).shape == (n // 640, 80)
    # a click at sample c lands in the frame whose centre (t * 640 + 320) is nearest to c
    wav = np.zeros(16000, np.float32)
    wav[5 * 640 + 300] = 1.0
    energy = f(wav).mean(1)
    assert int(np.argmax(energy)) == 5
    assert frame_centres(3).tolist() == [320, 960, 1600]


def test_mel_band_of_a_tone():
    p = MelParams()
    t = np.arange(16000) / 16000
    fb = mel_filterbank(p)
    # every filter touches at least one FFT bin (low bands are ~22 Hz wide, bins 15.6 Hz apart)
    assert fb.shape == (80, 513) and fb.max(1).min() > 0.5 and fb.max() <= 1.0
    centres = mel_to_hz(np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 82))[1:-1]
    for hz in (250, 1000, 3000):
        band = int(np.argmax(MelFeatures(p)(np.sin(2 * np.pi * hz * t).astype(np.float32)).mean(0)))
        assert abs(centres[band] - hz) < 0.1 * hz + 30


def test_mfcc_option_and_param_validation():
    f = MelFeatures(MelParams(features="mfcc", n_mfcc=13))
    assert f(synth_speechlike(1.0)).shape == (25, 13)
    with pytest.raises(SlamError):
        MelParams(features="spectrogram")
    with pytest.raises(SlamError):
        MelParams.from_dict({"hop": 1})


def test_fit_save_load_predict_round_trip(mel_km, tmp_path):
    path, frames = mel_km
    km = KMeans.load(path)
    assert km.n_units == 24 and km.dim == 80 and km.params["hop_length"] == 640
    units = km.predict(frames)
    assert units.dtype == np.int64 and units.min() >= 0 and units.max() < 24
    assert np.unique(units).size > 12  # the clusters are used, not one catch-all
    # nearest centroid on standardised frames, computed the slow obvious way
    z = (frames - km.mean) / km.std
    brute = np.argmin(((z[:, None] - km.centroids[None]) ** 2).sum(-1), axis=1)
    assert (units == brute).mean() > 0.999  # float32 near-ties aside
    km.save(tmp_path / "again.npz")
    assert KMeans.load(tmp_path / "again.npz").content_hash() == km.content_hash()


@pytest.mark.parametrize("compress", [0, 3])
def test_published_joblib_bin_and_npy(tmp_path, compress):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 16)).astype(np.float32) + rng.integers(0, 4, (600, 1))
    sk = SkKMeans(n_clusters=7, n_init=1, random_state=0).fit(x)
    joblib.dump(sk, tmp_path / "km.bin", compress=compress)  # the TWIST layout: a joblib'd sklearn KMeans
    km = KMeans.load(tmp_path / "km.bin")
    np.testing.assert_array_equal(km.centroids, sk.cluster_centers_.astype(np.float32))
    assert (km.predict(x) == sk.predict(x)).all()
    assert km.mean is None and km.std is None
    np.save(tmp_path / "c.npy", sk.cluster_centers_)
    assert KMeans.load(tmp_path / "c.npy").content_hash() == km.content_hash()
    # a plain pickle of a dict holding the estimator works too
    with open(tmp_path / "wrapped.pkl", "wb") as f:
        pickle.dump({"model": sk, "note": "x"}, f)
    assert KMeans.load(tmp_path / "wrapped.pkl").content_hash() == km.content_hash()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-kmeans",))


def test_hostile_pickle_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    joblib.dump({"cluster_centers_": _Evil()}, tmp_path / "evil.bin")
    with pytest.raises(SlamError, match="refusing"):
        KMeans.load(tmp_path / "evil.bin")
    assert not (tmp_path / "pwned-by-kmeans").exists()


def test_bad_kmeans_files(tmp_path):
    np.save(tmp_path / "one_d.npy", np.zeros(5))
    with pytest.raises(SlamError, match="centroids"):
        KMeans.load(tmp_path / "one_d.npy")
    (tmp_path / "junk.bin").write_bytes(b"garbage")
    with pytest.raises(SlamError, match="junk.bin"):
        KMeans.load(tmp_path / "junk.bin")
    with pytest.raises(SlamError, match="does not exist"):
        KMeans.load(tmp_path / "nope.npz")


def test_parse_spec_forms():
    assert parse_spec("mel:a/km.npz") == {"kind": "mel", "kmeans": "a/km.npz"}
    assert parse_spec("hubert:slprl/mhubert-base-25hz@11:km500.bin") == {
        "kind": "hubert", "model": "slprl/mhubert-base-25hz", "layer": 11, "kmeans": "km500.bin"}
    assert parse_spec("hubert:model=/m@x,layer=3,kmeans=/k:1.npy") == {
        "kind": "hubert", "model": "/m@x", "layer": 3, "kmeans": "/k:1.npy"}
    assert parse_spec("x/km.npz") == {"kind": "auto", "kmeans": "x/km.npz"}
    for bad in ("wav2vec:x", "hubert:model-without-layer", "km.bin"):
        with pytest.raises(SlamError):
            parse_spec(bad)


def test_mel_tokenizer_interface_save_to_and_hash(mel_km, tmp_path):
    path, _ = mel_km
    tok = load_tokenizer(f"mel:{path}")
    assert (tok.kind, tok.n_units, tok.frame_rate) == ("mel", 24, 25.0)
    assert load_tokenizer(str(path)).hash == tok.hash  # bare .npz: kind from the file
    wav = synth_speechlike(3.3, seed=9)
    frames = tok.encode(wav)
    assert frames.dtype == np.int64 and len(frames) == len(wav) // 640
    assert [f.tolist() for f in tok.encode_batch([wav, wav[:8000]])] == [frames.tolist(), frames[:12].tolist()]
    units, durs = tokenize(tok, wav)
    assert (np.repeat(units, durs) == frames).all() and (units[1:] != units[:-1]).all()
    u2, d2 = tokenize(tok, wav, dedup=False)
    assert (u2 == frames).all() and (d2 == 1).all()

    spec = tok.save_to(tmp_path / "model")
    assert spec["kmeans"] == "tokenizer-kmeans.npz" and spec["hash"] == tok.hash
    again = load_tokenizer(spec, root=tmp_path / "model")
    assert again.hash == tok.hash and (again.encode(wav) == frames).all()

    other = KMeans.load(path)
    other.centroids[0, 0] += 1e-3  # any change in the numbers changes the hash
    other.save(tmp_path / "other.npz")
    assert load_tokenizer(f"mel:{tmp_path / 'other.npz'}").hash != tok.hash
    with pytest.raises(SlamError, match="hash"):
        load_tokenizer({**spec, "kmeans": str(tmp_path / "other.npz")}, root=tmp_path / "model")


def test_mel_tokenizer_needs_mel_params(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((4, 80), np.float32))
    with pytest.raises(SlamError, match="not a mel k-means"):
        load_tokenizer(f"mel:{tmp_path / 'c.npy'}")
    KMeans(np.zeros((4, 13), np.float32), params={"kind": "mel", **MelParams().to_dict()}).save(tmp_path / "d.npz")
    with pytest.raises(SlamError, match="dims"):
        load_tokenizer(f"mel:{tmp_path / 'd.npz'}")
