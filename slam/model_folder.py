"""Model folders: writing one (`save_model`: HF files + slam.json + the speech tokenizer's files, atomically,
never over a folder slam did not write), reading one (`load_model`: a slam folder, or a published slamkit
`UnitLM` folder read directly), converting a slamkit folder, and loading a model with its own speech tokenizer
for inference. Safetensors only: a pickle is refused (or, for `slam convert`, read weights-only).

    model, info = load_model("runs/slam/final")
    model, info = load_for_inference("slprl/slam")                   # a hub id: fetched, then read
    tok = load_model_tokenizer(info, "runs/slam/final")               # refuses a tokenizer of another hash
    convert_slamkit("slam-published/", "slam-model/")                 # or: slam convert SRC --out DST
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import slam.attention  # noqa: F401  (registers the "slam_varlen" attention function with transformers)
from slam.errors import SlamError
from slam.model import _set_special_ids
from slam.text import load_text_tokenizer
from slam.tokens import SLAM_JSON, SlamInfo
from slam.units.tokenizer import load_tokenizer, tokenize
from slam.utils import atomic_dir, commit_dir

SLAMKIT_MODEL_TYPE = "speech_language_model"
SLAMKIT_PREFIX = "lm."


# --- model folders -------------------------------------------------------------------------------------------
def embed_tokenizer_files(spec: dict, folder: str | Path, root: str | Path | None = None) -> dict:
    """Copy the files a speech-tokenizer spec names into `folder` and return the spec with paths relative
    to it, so that a model folder carries its own tokenizer (slam.units.tokenizer.load_tokenizer(spec,
    root=folder)). Relative paths in `spec` are read from `root` (default: the current folder).
    The k-means file is always copied (small); a HuBERT model is copied only when it is a folder given
    relative to `root` (a hub id or an absolute folder stays a reference: 380 MB per checkpoint otherwise)."""
    folder, base = Path(folder), Path(root) if root is not None else Path.cwd()
    out = dict(spec)

    def resolve(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else base / q

    km = spec.get("kmeans")
    if km:
        src = resolve(str(km))
        if src.is_file():
            dst = folder / src.name
            if src.resolve() != dst.resolve():
                shutil.copy2(src, dst)
            out["kmeans"] = src.name
        elif not (folder / str(km)).is_file():
            warnings.warn(f"tokenizer k-means {str(src)!r} not found: slam.json will name it, but audio cannot "
                          f"be tokenized for this model until the file is put there", stacklevel=2)
    model = spec.get("model")
    if model and not Path(str(model)).is_absolute() and (base / str(model)).is_dir():
        name = Path(str(model)).name
        if (base / str(model)).resolve() != (folder / name).resolve():
            shutil.copytree(base / str(model), folder / name, dirs_exist_ok=True)
        out["model"] = name
    return out


def embed_text_tokenizer(path: str, folder: str | Path) -> str:
    """Interleaved / text models carry their HF text tokenizer. A relative `path` already names a folder
    relative to the model folder (slam.json's convention; "." = the model folder itself) and is kept; an
    absolute one (e.g. the TWIST base's folder, set at training time) is loaded and re-saved as
    `folder/text_tokenizer` (tokenizer files only, never the base's weights). Returns the name for slam.json."""
    src = Path(path).expanduser()
    if not src.is_absolute():
        return str(path)
    load_text_tokenizer(src).save_pretrained(str(Path(folder) / "text_tokenizer"))
    return "text_tokenizer"


def _refuse_foreign_folder(folder: Path) -> None:
    """Replacing a model folder deletes the old one: only ever one that slam wrote (it holds slam.json). An
    existing file, or a non-empty folder of anything else, is the user's and is refused, untouched."""
    if folder.exists() and not folder.is_dir():
        raise SlamError(f"{folder}: exists and is a file; the model folder must be a new or a slam model folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / SLAM_JSON).is_file():
        raise SlamError(f"{folder}: a non-empty folder that is not a slam model folder (no {SLAM_JSON}); slam "
                        f"replaces only model folders it wrote: choose another output folder")


def save_model(model: nn.Module, info: SlamInfo, folder: str | Path,
               tokenizer_root: str | Path | None = None) -> Path:
    """Write an HF model folder (config.json, model.safetensors, generation_config.json) + slam.json,
    atomically: everything goes to a temp sibling that is renamed onto `folder` at the end.

    The speech tokenizer's files named by `info.tokenizer` (relative paths read from `tokenizer_root`) are
    copied in and slam.json names them relative to the folder; so is a text tokenizer named by an absolute
    `info.text_tokenizer` (interleaved / text models); `info` itself is not modified."""
    folder = Path(folder)
    if info.vocab_size != model.config.vocab_size:
        raise SlamError(f"slam.json vocab_size {info.vocab_size} != model vocab_size {model.config.vocab_size}")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per save is noise between slam's lines
    _refuse_foreign_folder(folder)
    _set_special_ids(model, info)
    tmp = atomic_dir(folder)
    try:
        if info.tokenizer:
            info = dataclasses.replace(info, tokenizer=embed_tokenizer_files(info.tokenizer, tmp, tokenizer_root))
        if info.text_tokenizer:
            info = dataclasses.replace(info, text_tokenizer=embed_text_tokenizer(info.text_tokenizer, tmp))
        # A custom attention name in config.json would make plain `from_pretrained` fail without slam.
        impl = getattr(model.config, "_attn_implementation", None)
        if impl and impl not in ("eager", "sdpa"):
            model.config._attn_implementation = "sdpa"
        try:
            model.save_pretrained(tmp, safe_serialization=True)
        finally:
            if impl and impl not in ("eager", "sdpa"):
                model.config._attn_implementation = impl
        info.save(tmp)
        commit_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


MODEL_FILE_PATTERNS = ("*.json", "*.safetensors", "*.npz", "text_tokenizer/*", "hubert/*")
"""What a slam model folder holds and a hub download fetches (`slam push` uploads the same): the HF config
and safetensors weights, slam.json, the tokenizer's embedded k-means (tokenizer-kmeans.npz), an interleaved
model's text tokenizer and a copied local HuBERT; never a pickle."""


def _resolve_folder(src: str | Path) -> Path:
    p = Path(src)
    if p.is_dir():
        return p
    if p.exists() or str(src).startswith((".", "/")) or str(src).count("/") != 1:
        raise SlamError(f"model folder {str(src)!r} does not exist")
    from huggingface_hub import snapshot_download  # a hub id such as slprl/slam

    try:
        return Path(snapshot_download(str(src), allow_patterns=list(MODEL_FILE_PATTERNS)))
    except Exception as e:  # offline, unknown repo, ...: one clear line
        raise SlamError(f"{src!r} is not a local folder and could not be fetched from the hub: {e}") from e


def is_slamkit_folder(folder: str | Path) -> bool:
    cfg = Path(folder) / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("model_type") == SLAMKIT_MODEL_TYPE


def load_model(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               attn_implementation: str | None = None, pickle_ok: bool = False) -> tuple[nn.Module, SlamInfo]:
    """A slam model folder, or a published slamkit `UnitLM` folder (read directly, no conversion needed).

    dtype None keeps the stored dtype; training passes torch.float32 (master weights). The returned model
    is in eval mode with `use_cache=False` in its config. `pickle_ok` lets a published slamkit folder with
    only pytorch_model.bin be read with torch.load(weights_only=True) (`slam convert`); otherwise refused.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise between slam's own lines
    folder = _resolve_folder(folder)
    if not (folder / "config.json").exists():
        raise SlamError(f"{folder}: not a model folder (config.json is missing)")
    if is_slamkit_folder(folder):
        model, info = _load_slamkit(folder, dtype, attn_implementation, pickle_ok)
    else:
        info = SlamInfo.load(folder)
        _weight_files(folder)  # safetensors only: a pickle is refused before transformers could read it
        kwargs: dict[str, Any] = {"dtype": dtype if dtype is not None else "auto"}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True, **kwargs)
        except Exception as e:  # truncated, corrupt or mismatched weights (safetensors has its own error type)
            raise SlamError(f"{folder}/model.safetensors: cannot be loaded ({' '.join(str(e).split())[:160]}); "
                            f"the model folder is damaged: copy or train it again") from None
        if model.config.vocab_size != info.vocab_size:
            raise SlamError(f"{folder}: config vocab_size {model.config.vocab_size} != slam.json "
                            f"vocab_size {info.vocab_size}")
    model.config.use_cache = False
    model.to(device)
    model.eval()
    return model, info


# --- inference: a model folder with its speech tokenizer ----------------------------------------------------
def load_for_inference(model_dir: str | Path, device: str = "cpu", dtype: torch.dtype | None = None):
    """(model in eval mode, SlamInfo) from a slam model folder (or a published slamkit folder)."""
    model, info = load_model(model_dir, device=device, dtype=dtype)
    return model.eval(), info


def load_model_tokenizer(info: SlamInfo, model_dir: str | Path, spec: str | None = None):
    """The speech tokenizer that made the model's training units; refuses one whose hash differs.

    spec: a tokenizer spec string for models whose slam.json names none (e.g. a published slamkit folder:
    `hubert:slprl/mhubert-base-25hz@11:km500.bin`); it is then written into `info.tokenizer` (in memory)
    so that the vocoder choice follows it too.
    """
    if spec is None and not info.tokenizer:
        raise SlamError(f"{model_dir}: slam.json names no speech tokenizer, so audio cannot be turned into "
                        "units for this model; pass --tokenizer SPEC (e.g. hubert:MODEL@LAYER:KMEANS)")
    tok = load_tokenizer(spec if spec is not None else info.tokenizer, root=None if spec else model_dir)
    if info.tokenizer_hash and tok.hash != info.tokenizer_hash:
        raise SlamError(f"{model_dir}: the tokenizer found has hash {tok.hash[:12]} but the model was trained on "
                        f"units of {info.tokenizer_hash[:12]}; its units would be meaningless to the model")
    if tok.n_units != info.n_units:
        raise SlamError(f"{model_dir}: the tokenizer makes {tok.n_units} units but the model has {info.n_units}")
    if spec is not None and not info.tokenizer:
        info.tokenizer = tok.spec
    return tok


def audio_to_units(tok: Any, wav: np.ndarray, dedup: bool = True) -> tuple[np.ndarray, np.ndarray]:
    units, durations = tokenize(tok, wav, dedup=dedup)
    return np.asarray(units, dtype=np.int64), np.asarray(durations, dtype=np.int64)


def _weight_files(folder: Path, pickle_ok: bool = False) -> list[str]:
    """The weight files of a model folder: safetensors (sharded or not). A folder holding only
    pytorch_model.bin is refused (a pickle can run code when read), unless `pickle_ok` (`slam convert`, which
    reads it with torch.load(weights_only=True) and writes safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            return sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise SlamError(f"{index}: not a valid safetensors index ({e})") from None
    if (folder / "model.safetensors").exists():
        return ["model.safetensors"]
    if (folder / "pytorch_model.bin").exists():
        if pickle_ok:
            return ["pytorch_model.bin"]
        raise SlamError(f"{folder}: holds only pytorch_model.bin, a pickle; slam reads safetensors only (a pickle "
                        f"can run code when loaded): convert it with `slam convert` or re-save it as safetensors")
    raise SlamError(f"{folder}: no model.safetensors (slam reads safetensors only, never pickles)")


def _read_safetensors(folder: Path, pickle_ok: bool = False) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder, pickle_ok):
        try:
            if f.endswith(".bin"):  # weights only: tensors and plain containers, never arbitrary objects
                state.update(torch.load(str(folder / f), map_location="cpu", weights_only=True))
            else:
                state.update(load_file(str(folder / f)))
        except Exception as e:  # truncated / corrupt / not a weights file: one line naming it
            raise SlamError(f"{folder / f}: cannot be read ({' '.join(str(e).split())[:160]})") from None
    return state


def _load_slamkit(folder: Path, dtype: torch.dtype | None, attn_implementation: str | None, pickle_ok: bool = False
                  ) -> tuple[nn.Module, SlamInfo]:
    """slamkit `UnitLM`: config {model_type: speech_language_model, base_model_name, base_config: {...},
    vocab_size, ...}, weights `lm.<HF causal LM key>`. Every layout fact is read from the files and checked."""
    from transformers import AutoConfig, AutoModelForCausalLM

    top = json.loads((folder / "config.json").read_text())
    base = top.get("base_config")
    if not isinstance(base, dict) or "model_type" not in base:
        raise SlamError(f"{folder}: slamkit config has no nested base_config with a model_type")
    vocab = int(top.get("vocab_size") or base.get("vocab_size") or 0)
    ids = {k: base.get(f"{k}_token_id", top.get(f"{k}_token_id")) for k in ("pad", "bos", "eos")}
    if isinstance(ids["eos"], list):
        ids["eos"] = ids["eos"][0] if len(ids["eos"]) == 1 else ids["eos"]
    if ids != {"pad": 0, "bos": 1, "eos": 1} or vocab < 3:
        raise SlamError(f"{folder}: slamkit layout mismatch: expected pad 0, bos 1, eos 1 and units from 2, "
                        f"found {ids} with vocab_size {vocab}")
    # Private keys (_name_or_path, _attn_implementation_autoset...) and dtypes describe the saving session,
    # not the architecture; v4-style `rope_theta` keys are converted by transformers itself.
    cfg_dict = {k: v for k, v in base.items()
                if not k.startswith("_") and k not in ("model_type", "torch_dtype", "dtype", "auto_map")}
    config = AutoConfig.for_model(base["model_type"], **cfg_dict)
    config.vocab_size = vocab
    config.use_cache = False

    state = _read_safetensors(folder, pickle_ok)
    foreign = [k for k in state if not k.startswith(SLAMKIT_PREFIX)]
    if foreign:
        raise SlamError(f"{folder}: expected every weight under '{SLAMKIT_PREFIX}', found e.g. {foreign[0]!r}")
    state = {k[len(SLAMKIT_PREFIX):]: v for k, v in state.items()}
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    store_dtype = next(iter(state.values())).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or store_dtype, **kwargs)
    rows = model.get_input_embeddings().weight.shape[0]
    emb_key = next((k for k in state if k.endswith("embed_tokens.weight") or k.endswith("embed_in.weight")), None)
    if emb_key is not None and state[emb_key].shape[0] != rows:
        raise SlamError(f"{folder}: {emb_key} has {state[emb_key].shape[0]} rows, config vocab_size is {vocab}")
    result = model.load_state_dict(state, strict=False)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    missing = [k for k in result.missing_keys if not (tied and k.endswith("lm_head.weight"))]
    if missing or result.unexpected_keys:
        raise SlamError(f"{folder}: slamkit weights do not fit a {base['model_type']} of this config: "
                        f"missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    if tied:
        model.tie_weights()
    info = SlamInfo(n_units=vocab - 2, base_model=top.get("base_model_name"),
                    extra={"converted_from": "slamkit UnitLM", "source": str(folder),
                           "twist_init": top.get("twist_init")})
    _set_special_ids(model, info)
    return model, info


def convert_slamkit(src: str | Path, dst: str | Path, tokenizer: dict | None = None, tokenizer_hash: str = "",
                    dtype: torch.dtype | None = None, tokenizer_root: str | Path | None = None
                    ) -> tuple[Path, SlamInfo]:
    """Published slamkit folder (or hub id) -> slam model folder that plain `from_pretrained` loads.
    `tokenizer` (a slam.units.tokenizer spec, files relative to `tokenizer_root`) is copied in and recorded."""
    folder = _resolve_folder(src)
    if not is_slamkit_folder(folder):
        raise SlamError(f"{src}: not a slamkit UnitLM folder (config.json model_type != {SLAMKIT_MODEL_TYPE!r})")
    # a slamkit folder holding only pytorch_model.bin is read weights-only and written as safetensors
    model, info = load_model(folder, dtype=dtype, pickle_ok=True)
    if tokenizer:
        info.tokenizer = dict(tokenizer)
        info.tokenizer_hash = tokenizer_hash
    return save_model(model, info, dst, tokenizer_root=tokenizer_root), info
