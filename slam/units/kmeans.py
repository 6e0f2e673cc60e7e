"""k-means for speech units: fit on a sample of frames, save/load, apply (nearest centroid, batched in torch).

    km = fit_kmeans(frames, k=200, seed=0, standardise=True, params={"kind": "mel", ...})
    km.save("km.npz"); km = KMeans.load("km.npz")         # or the published TWIST .bin, or a .npy
    units = km.predict(feats)                             # np.int64 [T]

File formats read:
- `.npz` (written by slam; no pickle): `centroids` [K, D] float32, optional `mean`/`std` [D] (features are
  standardised before the distance), `params` (JSON text: the feature extractor that made the frames, e.g.
  {"kind": "mel", hop_length: 640, ...} or {"kind": "hubert", "model": ..., "layer": 11}).
- `.npy`: a [K, D] array of centroids.
- `.bin` / `.pkl` / `.joblib`: the published TWIST k-means (a joblib pickle of a scikit-learn KMeans). The
  scikit-learn version that pickled it is unknown and unpickling real sklearn classes across versions is
  fragile, so sklearn classes are replaced by an inert stand-in that only keeps its attribute dict, from
  which `cluster_centers_` is taken. Only an explicit list of fully qualified names is resolved
  (`_allowed_globals`: numpy's array/dtype/scalar/RandomState rebuilders, joblib's array record, plain
  containers), never by importing the named module, and object arrays are refused: a hostile pickle can
  neither run code nor import a module (`numpy.f2py.__main__` runs when imported).

Apply: argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 x.c_k), the |x|^2 term being the same for every k; the
same rule as sklearn's `predict`. Rows are processed 16384 at a time (a 16384 x 500 float32 distance block
is 33 MB), on the device of the input tensor.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam.errors import SlamError
from slam.utils import atomic_write_bytes, sha256_bytes

CHUNK = 16384


class _Inert:
    """Stand-in for any scikit-learn class found in a pickle: stores its state, runs no sklearn code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a k-means pickle may name, fully qualified, mapped to the objects they stand for.

    Taken from joblib/pickle dumps of sklearn KMeans and MiniBatchKMeans (random_state an int, None or a
    RandomState; pickle protocols 0-5, joblib compress 0 and 3) under numpy 1.x and 2.x. Nothing is imported
    by name: numpy's functions are taken from the objects that numpy itself reduces to them, so a pickle
    naming any other module (e.g. `numpy.f2py.__main__`, which runs when imported) is refused before any
    import happens. Protocols 0-2 spell builtins and copyreg the Python 2 way (`__builtin__`, `copy_reg`)."""
    import builtins
    import codecs
    import collections
    import copyreg

    from joblib.numpy_pickle import NumpyArrayWrapper

    class _PlainArrays(NumpyArrayWrapper):
        """joblib's array record, refusing object arrays: their items are a nested pickle, and joblib
        before 1.5 read that one with an unrestricted unpickler."""

        def read(self, unpickler: Any, *args: Any) -> Any:
            if self.dtype.hasobject:
                raise pickle.UnpicklingError("refusing an object array in a k-means pickle (centroids are "
                                             "numbers)")
            return super().read(unpickler, *args)

    def _latin1(text: str, encoding: str = "latin1") -> bytes:
        # protocol 2 stores bytes as latin-1 text; another codec name would import encodings.<name>
        if encoding not in ("latin1", "latin-1"):
            raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a k-means pickle")
        return codecs.encode(text, "latin1")

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core.multiarray._reconstruct (numpy._core in 2.x)
    scalar = np.float32(1).__reduce__()[0]  # numpy.core.multiarray.scalar
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy.core.numeric._frombuffer (protocol 5)
    rs_ctor = np.random.RandomState(0).__reduce__()[0]  # numpy.random._pickle.__randomstate_ctor
    bitgen_ctor = np.random.MT19937(0).__reduce__()[0]  # numpy.random._pickle.__bit_generator_ctor
    out: dict[tuple[str, str], Any] = {}
    for mod in ("builtins", "__builtin__"):
        for n in ("object", "set", "frozenset", "slice", "complex", "bytearray", "list", "dict", "tuple",
                  "int", "float", "bool", "str", "bytes", "range"):
            out[mod, n] = getattr(builtins, n)
    out["copyreg", "_reconstructor"] = out["copy_reg", "_reconstructor"] = copyreg._reconstructor
    out["_codecs", "encode"] = _latin1
    out["collections", "OrderedDict"] = collections.OrderedDict
    out["numpy", "ndarray"], out["numpy", "dtype"] = np.ndarray, np.dtype
    for core in ("numpy.core", "numpy._core"):
        out[f"{core}.multiarray", "_reconstruct"] = reconstruct
        out[f"{core}.multiarray", "scalar"] = scalar
        out[f"{core}.numeric", "_frombuffer"] = frombuffer
    out["numpy.random._pickle", "__randomstate_ctor"] = rs_ctor
    out["numpy.random", "__RandomState_ctor"] = rs_ctor  # numpy < 1.17 (called without arguments)
    out["numpy.random._pickle", "__bit_generator_ctor"] = bitgen_ctor
    out["numpy.random._mt19937", "MT19937"] = np.random.MT19937
    for mod in ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle"):  # the latter: sklearn < 0.23
        out[mod, "NumpyArrayWrapper"] = _PlainArrays
    return out


def _load_pickle_centroids(path: Path) -> np.ndarray:
    try:
        from joblib.numpy_pickle import NumpyUnpickler, _validate_fileobject_and_memmap
    except ImportError as e:  # joblib comes with scikit-learn, which made the file
        raise SlamError(f"{path}: reading a pickled k-means needs joblib (pip install scikit-learn)") from e
    allowed = _allowed_globals()

    class Restricted(NumpyUnpickler):  # type: ignore[misc, valid-type]
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in allowed:
                return allowed[module, name]
            # any scikit-learn estimator (KMeans, MiniBatchKMeans, a Pipeline holding one): an inert class of
            # that name that keeps its attribute dict; sklearn itself is never imported, no sklearn code runs
            if module.split(".")[0] == "sklearn" and name.isidentifier() and not name.startswith("_"):
                return type(name, (_Inert,), {})
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a k-means pickle")

    with open(path, "rb") as f:
        # joblib's own helper undoes joblib's optional compression (zlib/gzip/lzma...) transparently.
        with _validate_fileobject_and_memmap(f, str(path), None) as (fobj, _):
            obj = Restricted(str(path), fobj, True).load()
    return _find_centers(obj, path)


def _find_centers(obj: Any, path: Path, depth: int = 0) -> np.ndarray:
    if isinstance(obj, np.ndarray) and obj.ndim == 2:
        return obj
    state = obj if isinstance(obj, dict) else getattr(obj, "__dict__", None)
    if isinstance(state, dict) and depth < 4:
        if "cluster_centers_" in state:
            return np.asarray(state["cluster_centers_"])
        for value in state.values():  # e.g. a Pipeline or a dict holding the estimator
            if isinstance(value, (dict, _Inert)):
                try:
                    return _find_centers(value, path, depth + 1)
                except SlamError:
                    pass
    raise SlamError(f"{path}: no `cluster_centers_` found in the pickle (got {type(obj).__name__})")


@dataclass
class KMeans:
    """Centroids plus what made the frames. `predict` standardises with mean/std when they are set."""

    centroids: np.ndarray
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    source: str = ""
    _dev: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        c = np.asarray(self.centroids)
        if c.ndim != 2 or c.shape[0] < 1 or not np.issubdtype(c.dtype, np.floating):
            raise SlamError(f"{self.source or 'k-means'}: centroids must be a [K, D] float array, got "
                            f"{c.dtype}{list(c.shape)}")
        if not np.isfinite(c).all():
            raise SlamError(f"{self.source or 'k-means'}: centroids contain NaN or infinite values")
        self.centroids = np.ascontiguousarray(c, dtype=np.float32)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float32).reshape(-1)
                if v.shape[0] != self.dim:
                    raise SlamError(f"{self.source}: {name} has {v.shape[0]} values, centroids have {self.dim}")
                setattr(self, name, v)
        if self.std is not None and (self.std <= 0).any():
            raise SlamError(f"{self.source}: std must be > 0")

    @property
    def n_units(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def content_hash(self, with_params: bool = True) -> str:
        """sha256 of the numbers that decide units (centroids, mean, std, feature params), not of the file:
        the same centroids read from the .bin, a .npy or slam's .npz hash the same. HuBERT tokenizers hash
        without params (they only name the model, which is hashed by its weights instead)."""
        parts: list[bytes | str] = [f"{self.centroids.shape}", self.centroids.tobytes()]
        for v in (self.mean, self.std):
            parts.append(b"-" if v is None else v.tobytes())
        if with_params:
            parts.append(json.dumps(self.params, sort_keys=True))
        return sha256_bytes(*parts)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        key = str(device)
        if key not in self._dev:
            c = torch.from_numpy(self.centroids).to(device)
            mean = None if self.mean is None else torch.from_numpy(self.mean).to(device)
            std = None if self.std is None else torch.from_numpy(self.std).to(device)
            self._dev[key] = (c, (c * c).sum(1), mean, std)
        return self._dev[key]

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        _, _, mean, std = self._on(x.device)
        if mean is not None:
            x = x - mean
        if std is not None:
            x = x / std
        return x

    @torch.inference_mode()
    def predict(self, feats: np.ndarray | torch.Tensor) -> np.ndarray:
        """[T, D] frames -> [T] int64 unit ids (nearest centroid after standardisation)."""
        x = feats if isinstance(feats, torch.Tensor) else torch.from_numpy(np.asarray(feats, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise SlamError(f"k-means expects [T, {self.dim}] features, got {list(x.shape)}")
        c, c2, _, _ = self._on(x.device)
        out = []
        for i in range(0, x.shape[0], CHUNK):
            xb = self.standardise(x[i:i + CHUNK].float())
            out.append(torch.argmin(c2[None] - 2.0 * (xb @ c.T), dim=1))
        if not out:
            return np.zeros(0, dtype=np.int64)
        return torch.cat(out).cpu().numpy().astype(np.int64)

    # --- files ---------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, Any] = {"centroids": self.centroids, "params": np.array(json.dumps(self.params))}
        if self.mean is not None:
            arrays["mean"] = self.mean
        if self.std is not None:
            arrays["std"] = self.std
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise SlamError(f"{path}: slam writes k-means as .npz")
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "KMeans":
        path = Path(path)
        if not path.is_file():
            raise SlamError(f"k-means file {str(path)!r} does not exist")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    if "centroids" not in z:
                        raise SlamError(f"{path}: no `centroids` array (not a slam k-means file)")
                    params = json.loads(str(z["params"])) if "params" in z else {}
                    return cls(z["centroids"], z["mean"] if "mean" in z else None,
                               z["std"] if "std" in z else None, params, str(path))
            if suffix == ".npy":
                return cls(np.load(path, allow_pickle=False), source=str(path))
            if suffix in (".bin", ".pkl", ".pickle", ".joblib"):
                return cls(_load_pickle_centroids(path), source=str(path))
        except SlamError:
            raise
        except (pickle.UnpicklingError, ValueError, OSError, EOFError, LookupError, AttributeError,
                TypeError, IndexError, MemoryError, RecursionError, zlib.error, lzma.LZMAError) as e:
            # what a truncated, corrupt or hostile file raises (a cut stream: EOFError/UnpicklingError; a
            # corrupt compressed one: zlib.error/LZMAError; an absurd array shape: ValueError/MemoryError)
            raise SlamError(f"{path}: cannot read k-means ({type(e).__name__}: {e})") from None
        raise SlamError(f"{path}: unknown k-means format {suffix!r} (expected .npz, .npy or a joblib .bin)")


def free_cores() -> int:
    """Cores not already busy (cpu count - 1-min load average, at least 1). sklearn's OpenMP threads
    spin-wait for each other: on a 2-core box with a load of 10, 50k x 200 k-means took 77 s with 2
    threads and 3.8 s with 1; on an idle machine all cores are used."""
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, (os.cpu_count() or 1) - int(round(busy)))


def _threads(n: int):
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=n)


def fit_kmeans(frames: np.ndarray, k: int, seed: int = 0, standardise: bool = True, params: dict | None = None,
               batch_size: int = 4096, max_iter: int = 100, n_init: int = 3) -> KMeans:
    """scikit-learn MiniBatchKMeans on [N, D] frames (k-means++ init, `n_init` restarts, best inertia kept).
    MiniBatch: ~10x faster than Lloyd on 500k frames at a <1% inertia cost, which is what the published
    HuBERT k-means used too. With `standardise`, mean/std of the frames are stored and applied first."""
    from sklearn.cluster import MiniBatchKMeans

    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 2:
        raise SlamError(f"expected [N, D] frames, got shape {list(x.shape)}")
    if x.shape[0] < k:
        raise SlamError(f"only {x.shape[0]} frames to fit {k} clusters; give more audio or fewer --units")
    mean = std = None
    if standardise:
        mean = x.mean(0)
        std = np.maximum(x.std(0), 1e-5)
        x = (x - mean) / std
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch_size, max_iter=max_iter,
                         n_init=n_init, reassignment_ratio=0.01, max_no_improvement=50)
    with _threads(free_cores()):
        km.fit(x)
    return KMeans(km.cluster_centers_.astype(np.float32), mean, std, dict(params or {}), "fit")
