"""The one speech tokenizer interface every stage uses (tokenize, eval, generate, demo).

    tok = load_tokenizer("mel:km.npz")                             # weight-free log-mel + k-means
    tok = load_tokenizer("hubert:slprl/mhubert-base-25hz@11:km500.bin")
    frames = tok.encode(wav)                 # np.int64 [len(wav) // 640], one unit per 40 ms frame
    units, durations = tokenize(tok, wav)    # consecutive repeats collapsed, durations in frames
    spec = tok.save_to(model_dir)            # copies the k-means in; spec paths relative to model_dir
    tok = load_tokenizer(spec, root=model_dir)   # same units again (the spec's hash is checked)

Spec strings:
    mel:PATH.npz                                a k-means file from `slam fit-kmeans --tokenizer mel`
    hubert:MODEL@LAYER:KMEANS                   MODEL = hub id or folder, KMEANS = .bin / .npy / .npz
    hubert:model=MODEL,layer=LAYER,kmeans=PATH  the same as key=value (for paths holding '@' or ':')
    PATH.npz                                    a slam k-means file alone: its params name kind/model/layer
Spec dicts: {"kind": "mel", "kmeans": PATH} or {"kind": "hubert", "model": M, "layer": L, "kmeans": PATH},
paths relative to `root` (default: the current folder); an optional "hash" must match the loaded tokenizer.

`hash` is a sha256 of what decides the units: the k-means numbers, the feature parameters and, for HuBERT,
every weight and buffer plus the architecture fields and the layer. File formats and paths do not enter it,
so a tokenizer copied by `save_to` keeps its hash.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from slam.errors import SlamError
from slam.units.dataset import dedup as _dedup
from slam.units.kmeans import KMeans
from slam.units.melkmeans import MelFeatures, MelParams
from slam.utils import sha256_bytes

KMEANS_FILE = "tokenizer-kmeans.npz"
_HUBERT = re.compile(r"^(?P<model>.+)@(?P<layer>\d+):(?P<kmeans>.+)$")


def parse_spec(spec: str) -> dict:
    """A spec string -> a spec dict (see the module docstring)."""
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("mel", "hubert"):
        if spec.endswith(".npz"):
            return {"kind": "auto", "kmeans": spec}
        raise SlamError(f"tokenizer spec {spec!r}: expected mel:KMEANS.npz, hubert:MODEL@LAYER:KMEANS, "
                        f"hubert:model=...,layer=...,kmeans=... or a k-means .npz")
    if "kmeans=" in rest:
        out: dict[str, Any] = {"kind": kind}
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            if not eq or key.strip() not in ("model", "layer", "kmeans"):
                raise SlamError(f"tokenizer spec {spec!r}: bad field {part!r} (use model=, layer=, kmeans=)")
            out[key.strip()] = value.strip()
        if "layer" in out:
            out["layer"] = int(out["layer"])
        return out
    if kind == "mel":
        return {"kind": "mel", "kmeans": rest}
    m = _HUBERT.match(rest)
    if m:
        return {"kind": "hubert", "model": m["model"], "layer": int(m["layer"]), "kmeans": m["kmeans"]}
    if rest.endswith(".npz"):
        return {"kind": "hubert", "kmeans": rest}  # model and layer from the file's params
    raise SlamError(f"tokenizer spec {spec!r}: expected hubert:MODEL@LAYER:KMEANS (e.g. "
                    f"hubert:slprl/mhubert-base-25hz@11:km500.bin)")


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root / p)


def _model_ref(model: str, root: Path) -> tuple[str, bool]:
    """(reference, is_local): an existing folder becomes an absolute path, anything else is a hub id."""
    local = _resolve(model, root)
    if local.is_dir():
        return str(local.resolve()), True
    if Path(model).is_absolute() or model.startswith((".", "~")):
        raise SlamError(f"HuBERT folder {model!r} does not exist")
    return model, False


class Tokenizer:
    """Speech -> unit frames. Build it with `load_tokenizer`."""

    def __init__(self, kind: str, kmeans: KMeans, mel: MelFeatures | None = None, hubert: Any = None,
                 model_ref: str | None = None, model_is_local: bool = False) -> None:
        self.kind = kind
        self.kmeans = kmeans
        self.mel = mel
        self.hubert = hubert
        self.model_ref = model_ref
        self.model_is_local = model_is_local
        self._hash: str | None = None
        feat_dim = mel.params.dim if mel is not None else hubert.dim
        if kmeans.dim != feat_dim:
            raise SlamError(f"{kmeans.source}: centroids have {kmeans.dim} dims but the {kind} features have "
                            f"{feat_dim}: this k-means belongs to another feature extractor")

    # --- description ---------------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return self.kmeans.n_units

    @property
    def frame_rate(self) -> float:
        return self.mel.params.frame_rate if self.mel is not None else self.hubert.frame_rate

    @property
    def sample_rate(self) -> int:
        return 16000

    @property
    def spec(self) -> dict:
        """JSON spec with absolute paths (hub ids stay ids)."""
        out: dict[str, Any] = {"kind": self.kind, "kmeans": str(Path(self.kmeans.source).resolve())}
        if self.kind == "hubert":
            out |= {"model": self.model_ref, "layer": self.hubert.layer}
        return out

    @property
    def hash(self) -> str:
        if self._hash is None:
            if self.kind == "mel":
                self._hash = sha256_bytes("mel", self.kmeans.content_hash())
            else:
                self._hash = sha256_bytes("hubert", self.hubert.weights_hash(),
                                          json.dumps(self.hubert.arch(), sort_keys=True),
                                          self.kmeans.content_hash(with_params=False))
        return self._hash

    def n_frames(self, n_samples: int) -> int:
        if self.mel is not None:
            return int(n_samples) // self.mel.params.hop_length
        return self.hubert.n_frames(n_samples)

    # --- encoding ------------------------------------------------------------------------------------
    def features(self, wav: np.ndarray) -> np.ndarray:
        """Un-standardised frame features [T, D] (log-mel or HuBERT layer output), as numpy float32."""
        if self.mel is not None:
            return self.mel(wav)
        if self.n_frames(len(wav)) < 1:
            return np.zeros((0, self.hubert.dim), dtype=np.float32)
        return self.hubert([wav])[0].cpu().numpy()

    def encode(self, wav: np.ndarray) -> np.ndarray:
        """One unit per frame (no dedup): np.int64 [n_frames(len(wav))]."""
        return self.encode_batch([wav])[0]

    def encode_batch(self, wavs: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
        if self.mel is not None:
            return [self.kmeans.predict(self.mel(w)) for w in wavs]
        keep = [i for i, w in enumerate(wavs) if self.n_frames(len(w)) >= 1]
        out = [np.zeros(0, dtype=np.int64) for _ in wavs]
        if not keep:
            return out
        feats = self.hubert([wavs[i] for i in keep], batch_size=batch_size)
        # one k-means call for the whole batch (one kernel launch on a GPU instead of one per file)
        units = self.kmeans.predict(torch.cat(feats))
        offsets = np.cumsum([0] + [f.shape[0] for f in feats])
        for j, i in enumerate(keep):
            out[i] = units[offsets[j]:offsets[j + 1]]
        return out

    # --- embedding into a folder ---------------------------------------------------------------------
    def save_to(self, folder: str | Path, copy_model: bool = False) -> dict:
        """Write the k-means (as .npz, never a pickle) into `folder` and return a spec whose paths are
        relative to it, plus the hash. A HuBERT hub id stays an id; a local HuBERT folder is referenced by
        its absolute path, or copied to `folder/hubert` with `copy_model=True` (380 MB for mHuBERT)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        params = dict(self.kmeans.params)
        spec: dict[str, Any] = {"kind": self.kind, "kmeans": KMEANS_FILE}
        if self.kind == "hubert":
            model = self.model_ref
            if copy_model and self.model_is_local:
                target = folder / "hubert"
                if Path(self.model_ref).resolve() != target.resolve():
                    shutil.rmtree(target, ignore_errors=True)
                    self.hubert.model.save_pretrained(target)
                model = "hubert"
            spec |= {"model": model, "layer": self.hubert.layer}
            params |= {"kind": "hubert", "model": model, "layer": self.hubert.layer}
        KMeans(self.kmeans.centroids, self.kmeans.mean, self.kmeans.std, params).save(folder / KMEANS_FILE)
        spec["hash"] = self.hash
        return spec


def load_tokenizer(spec: str | dict, root: str | Path | None = None, device: str | torch.device | None = None,
                   compile: bool = False, max_batch_seconds: float | None = None) -> Tokenizer:
    """Build a Tokenizer from a spec string or dict (see the module docstring)."""
    root = Path(root) if root is not None else Path.cwd()
    d = parse_spec(spec) if isinstance(spec, str) else dict(spec)
    if "kmeans" not in d:
        raise SlamError(f"tokenizer spec {d}: no `kmeans` file given")
    km = KMeans.load(_resolve(str(d["kmeans"]), root))
    kind = d.get("kind", "auto")
    if kind == "auto":
        kind = km.params.get("kind")
        if kind not in ("mel", "hubert"):
            raise SlamError(f"{km.source}: the file does not say which features it belongs to; "
                            f"use mel:PATH or hubert:MODEL@LAYER:PATH")
    if kind == "mel":
        if km.params.get("kind") != "mel":
            raise SlamError(f"{km.source}: not a mel k-means (a mel tokenizer needs the .npz written by "
                            f"`slam fit-kmeans --tokenizer mel`, which holds the feature parameters)")
        params = MelParams.from_dict({k: v for k, v in km.params.items() if k != "kind"})
        tok = Tokenizer("mel", km, mel=MelFeatures(params))
    elif kind == "hubert":
        from slam.units.hubert import HubertFeatures

        model = d.get("model") or km.params.get("model")
        layer = d.get("layer", km.params.get("layer"))
        if model is None or layer is None:
            raise SlamError(f"tokenizer spec {d}: a hubert tokenizer needs a model and a layer")
        if "layer" in km.params and int(km.params["layer"]) != int(layer):
            raise SlamError(f"{km.source} was fitted on layer {km.params['layer']}, the spec asks for layer "
                            f"{layer}: units would be meaningless")
        ref, local = _model_ref(str(model), root)
        enc = HubertFeatures(ref, int(layer), device=device, compile=compile, max_batch_seconds=max_batch_seconds)
        tok = Tokenizer("hubert", km, hubert=enc, model_ref=ref, model_is_local=local)
    else:
        raise SlamError(f"tokenizer kind {kind!r}: expected 'mel' or 'hubert'")
    if d.get("hash") and d["hash"] != tok.hash:
        raise SlamError(f"tokenizer {tok.spec} has hash {tok.hash[:12]}..., the spec expects "
                        f"{str(d['hash'])[:12]}...: these are not the units this model/dataset was made with")
    return tok


def tokenize(tok: Tokenizer, wav: np.ndarray, dedup: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """wav -> (units, durations in frames). Without dedup every duration is 1."""
    frames = tok.encode(wav)
    if not dedup:
        return frames, np.ones_like(frames)
    return _dedup(frames)
