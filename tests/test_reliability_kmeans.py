"""Issue 15 item 4: a k-means pickle may name only an explicit list of fully qualified globals.

The published TWIST km500 .bin is a joblib pickle of a scikit-learn KMeans with cluster_centers_ [500, 768];
the stand-in here is made the same way (a fitted sklearn KMeans, joblib.dump), so the allow-list is checked
against what sklearn/joblib/numpy really write, not against a hand-made pickle."""

import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.cluster import MiniBatchKMeans

from slam.errors import SlamError
from slam.units.kmeans import KMeans

# What the crafted file holds: GLOBAL numpy.f2py.__main__ ndarray, then STOP. Importing
# numpy.f2py.__main__ runs f2py's command line, which exits the process: "exit 0 having done nothing".
CRAFTED = b"cnumpy.f2py.__main__\nndarray\n."


def _load_in_fresh_process(path):
    """KMeans.load in a new interpreter: what it raised and which numpy submodules got imported."""
    code = (
        "import json, sys\n"
        "from slam.units.kmeans import KMeans\n"
        "before = set(sys.modules)\n"
        "try:\n"
        f"    KMeans.load({str(path)!r}); err = None\n"
        "except Exception as e:\n"
        "    err = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'err': err, 'new': sorted(m for m in set(sys.modules) - before if 'f2py' in m)}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_crafted_30_byte_file_imports_nothing(tmp_path):
    assert len(CRAFTED) == 30
    (tmp_path / "km.bin").write_bytes(CRAFTED)
    got = _load_in_fresh_process(tmp_path / "km.bin")
    assert got["err"] and got["err"].startswith("SlamError") and "refusing to load numpy.f2py.__main__.ndarray" \
        in got["err"], got
    assert got["new"] == []  # numpy.f2py was never imported, so nothing of it ran


@pytest.mark.parametrize("module,name", [("numpy.f2py.__main__", "ndarray"), ("numpy.testing", "dtype"),
                                         ("numpy.lib.npyio", "_reconstruct"), ("sklearn.utils", "_joblib"),
                                         ("joblib.numpy_pickle", "NDArrayWrapper"), ("builtins", "eval")])
def test_names_outside_the_list_are_refused(tmp_path, module, name):
    (tmp_path / "km.pkl").write_bytes(f"c{module}\n{name}\n.".encode())
    with pytest.raises(SlamError, match=f"refusing to load {module}.{name}"):
        KMeans.load(tmp_path / "km.pkl")


def test_only_the_latin1_codec_of_protocol_2(tmp_path):
    # _codecs.encode("x", "rot13"): another codec name would make Python import encodings.<name>
    (tmp_path / "km.pkl").write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(SlamError, match="refusing codec 'rot13'"):
        KMeans.load(tmp_path / "km.pkl")


def test_object_arrays_are_refused(tmp_path):
    joblib.dump({"cluster_centers_": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=object)}, tmp_path / "km.bin")
    with pytest.raises(SlamError, match="object array"):
        KMeans.load(tmp_path / "km.bin")


@pytest.fixture(scope="module")
def km500(tmp_path_factory):
    """A sklearn KMeans with cluster_centers_ [500, 768], like TWIST's km500 (one Lloyd step suffices: the
    file layout, not the clustering, is under test)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 768)).astype(np.float32)
    sk = SkKMeans(n_clusters=500, n_init=1, max_iter=1, random_state=0).fit(x)
    assert sk.cluster_centers_.shape == (500, 768)
    return sk, x, tmp_path_factory.mktemp("km500")


@pytest.mark.parametrize("compress", [0, 3, ("lzma", 1)])
def test_twist_like_km500_joblib_loads(km500, compress):
    sk, x, folder = km500
    path = folder / f"km500-{str(compress)[:4]}.bin"
    joblib.dump(sk, path, compress=compress)
    km = KMeans.load(path)
    assert (km.n_units, km.dim) == (500, 768)
    np.testing.assert_array_equal(km.centroids, sk.cluster_centers_.astype(np.float32))
    assert (km.predict(x[:200]) == sk.predict(x[:200])).mean() > 0.99  # float32 near-ties aside


@pytest.mark.parametrize("protocol", range(6))
def test_every_pickle_protocol_and_a_randomstate(tmp_path, protocol):
    # protocols 0-2 name builtins/copyreg the Python 2 way; random_state=RandomState pickles numpy's
    # RandomState and bit-generator constructors; MiniBatchKMeans is the other estimator slam's docs name
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    for est in (SkKMeans(5, n_init=1, random_state=np.random.RandomState(0)),
                MiniBatchKMeans(5, n_init=1, random_state=0, batch_size=64)):
        est.fit(x)
        (tmp_path / "km.pkl").write_bytes(pickle.dumps(est, protocol=protocol))
        np.testing.assert_array_equal(KMeans.load(tmp_path / "km.pkl").centroids,
                                      est.cluster_centers_.astype(np.float32))


def test_truncated_or_corrupt_files_are_one_clear_error(km500, tmp_path):
    sk, _, _ = km500
    for compress in (0, 3):
        joblib.dump(sk, tmp_path / "full.bin", compress=compress)
        data = (tmp_path / "full.bin").read_bytes()
        # (a zlib stream cut inside its 4-byte checksum trailer still holds every byte: it loads, rightly)
        for cut in (1, 30, 200, len(data) // 2, len(data) - 100):
            (tmp_path / "cut.bin").write_bytes(data[:cut])
            with pytest.raises(SlamError, match="cut.bin"):
                KMeans.load(tmp_path / "cut.bin")
        flipped = bytearray(data)
        for i in range(40, len(data), len(data) // 7):
            flipped[i] ^= 0xFF
        (tmp_path / "flip.bin").write_bytes(bytes(flipped))
        try:
            KMeans.load(tmp_path / "flip.bin")  # a flip inside the float data can load: that is fine
        except SlamError as e:
            assert "flip.bin" in str(e)
