"""Speech LMs as HF causal LMs: TWIST init from a text LM, random init, and model folders (HF + slam.json).

TWIST (Hassid et al. 2023) keeps a pretrained text LM's transformer body and replaces its vocabulary by the
speech units; the Slam recipe does this on Qwen2.5-0.5B (358M parameters once the 151,936-row table shrinks
to 502 rows), with RoPE theta 10,000 instead of Qwen's 1e6 and every dropout at 0.

    model, info = twist_init("Qwen/Qwen2.5-0.5B", n_units=500)      # hub id or local folder
    save_model(model, info, "runs/x/final")                         # config.json, model.safetensors, slam.json
    model, info = load_model("runs/x/final")                        # also reads slamkit `UnitLM` folders
    convert_slamkit("slam-published/", "slam-model/")               # or: slam convert SRC --out DST

Vocabulary rows come from the SlamInfo layout (pad 0, <s> 1, units from 2 for speech-only models; an
interleaved layout simply has a larger vocab_size and unit_offset), so one code path serves both.
`use_cache` is switched off in every config slam writes: a cache built during a packed training forward
silently lets documents attend to each other (docs/model-and-packing.md, "Attention for packed rows").
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import slam.attention  # noqa: F401  (registers the "slam_varlen" attention function with transformers)
from slam.errors import SlamError
from slam.text import load_text_tokenizer
from slam.tokens import SLAM_JSON, SlamInfo, require_interleaved
from slam.units.tokenizer import load_tokenizer, tokenize
from slam.utils import atomic_dir, commit_dir

SLAMKIT_MODEL_TYPE = "speech_language_model"
SLAMKIT_PREFIX = "lm."

UnitInit = Literal["truncate", "fresh"]


# --- config surgery ------------------------------------------------------------------------------------------
def _is_dropout_key(key: str) -> bool:
    k = key.lower()
    return "dropout" in k or k.endswith("pdrop") or k == "layerdrop"


def zero_dropout(config: Any) -> list[str]:
    """Set every dropout probability of an HF config to 0 (names vary: dropout, attention_dropout,
    hidden_dropout, resid_pdrop, layerdrop...). Returns the keys changed. Removing dropout helped the paper."""
    changed = []
    for key, value in config.to_dict().items():
        if _is_dropout_key(key) and isinstance(value, (int, float)) and not isinstance(value, bool) and value:
            setattr(config, key, 0.0)
            changed.append(key)
    return changed


def set_rope_theta(config: Any, theta: float) -> bool:
    """Override the RoPE base where the family has RoPE (transformers 5 keeps it in `rope_parameters`,
    possibly one dict per layer type). Returns False for families without RoPE (OPT: learned positions)."""
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        rp["rope_theta"] = float(theta)
        return True
    if isinstance(rp, dict) and rp and all(isinstance(v, dict) for v in rp.values()):
        for v in rp.values():
            v["rope_theta"] = float(theta)
        return True
    if hasattr(config, "rope_theta"):
        config.rope_theta = float(theta)
        return True
    return False


def _set_special_ids(model: nn.Module, info: SlamInfo) -> None:
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is None:
            continue
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = info.pad_id, info.bos_id, info.eos_id
    # Cache off in the saved config too: loaders that forget use_cache=False must not leak documents.
    model.config.use_cache = False
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True  # generation wants the cache; training never calls generate


def _prepare_config(config: Any, rope_theta: float | None) -> dict[str, Any]:
    changed = zero_dropout(config)
    rope = set_rope_theta(config, rope_theta) if rope_theta is not None else False
    config.use_cache = False
    return {"dropout_zeroed": changed, "rope_theta": float(rope_theta) if rope else None}


def _zero_dropout_modules(model: nn.Module) -> None:
    """Belt and braces: modules that copied a dropout p at construction time."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0


# --- vocabulary surgery --------------------------------------------------------------------------------------
def _init_std(config: Any) -> float:
    return float(getattr(config, "initializer_range", None) or getattr(config, "init_std", None) or 0.02)


def replace_vocabulary(model: nn.Module, info: SlamInfo, unit_init: UnitInit = "truncate", seed: int = 0) -> None:
    """Resize input embeddings and LM head to `info.vocab_size` rows, in place.

    `truncate` (TWIST/slamkit: `resize_token_embeddings` keeps the first rows) copies the first rows of the
    text tables; rows beyond the text vocabulary, and all rows with `fresh`, are drawn from N(0, init std)
    with a seeded generator. Tied models stay tied (one tensor); untied heads get their own rows + bias.
    """
    if unit_init not in ("truncate", "fresh"):
        raise SlamError(f"unit_init must be 'truncate' or 'fresh', got {unit_init!r}")
    old_in = model.get_input_embeddings()
    old_out = model.get_output_embeddings()
    tied = old_out is not None and old_out.weight is old_in.weight
    v_new, dim = info.vocab_size, old_in.weight.shape[1]
    std = _init_std(model.config)
    gen = torch.Generator().manual_seed(seed)

    def rows(old: torch.Tensor, width: int) -> torch.Tensor:
        new = torch.empty(v_new, width, dtype=torch.float32).normal_(0.0, std, generator=gen)
        if unit_init == "truncate":
            n = min(v_new, old.shape[0])
            new[:n] = old[:n].float()
        return new.to(old.dtype)

    # padding_idx follows the new pad id (OPT's text table has padding_idx=1, which is our <s>: keeping it
    # would freeze the gradient of the most frequent token).
    emb = nn.Embedding(v_new, dim, padding_idx=info.pad_id, dtype=old_in.weight.dtype,
                       device=old_in.weight.device)
    with torch.no_grad():
        emb.weight.copy_(rows(old_in.weight.data, dim))
    model.set_input_embeddings(emb)
    if old_out is not None:
        out_dim = old_out.weight.shape[1]
        head = nn.Linear(out_dim, v_new, bias=old_out.bias is not None, dtype=old_out.weight.dtype,
                         device=old_out.weight.device)
        with torch.no_grad():
            if tied:
                head.weight = emb.weight
            else:
                head.weight.copy_(rows(old_out.weight.data, out_dim))
            if old_out.bias is not None:
                bias = torch.zeros(v_new, dtype=old_out.bias.dtype)
                if unit_init == "truncate":
                    n = min(v_new, old_out.bias.shape[0])
                    bias[:n] = old_out.bias.data[:n]
                head.bias.copy_(bias)
        model.set_output_embeddings(head)
    model.config.vocab_size = v_new
    if hasattr(model, "vocab_size"):
        model.vocab_size = v_new
    _set_special_ids(model, info)


def init_new_rows(model: Any, info: SlamInfo, seed: int = 0, noise: float = 0.1) -> None:
    """Rows from `unit_offset` on (units, markers, pad) = mean of the used text rows + noise x their std.

    Text rows are not touched (bit-identical to what twist_init copied). Input table and untied head get the
    same treatment (a tied head is the same tensor); a head bias gets the mean text bias."""
    require_interleaved(info)
    n_text = int(info.extra.get("text_vocab_size", info.unit_offset))
    gen = torch.Generator().manual_seed(int(seed))
    tables = [model.get_input_embeddings()]
    head = model.get_output_embeddings()
    if head is not None and head.weight is not tables[0].weight:
        tables.append(head)
    for table in tables:
        w = table.weight.data  # in place, outside autograd
        text = w[:n_text].float()
        mean, std = text.mean(0), text.std(0)
        n_new = w.shape[0] - info.unit_offset
        rows = mean + noise * std * torch.randn(n_new, w.shape[1], generator=gen)
        w[info.unit_offset:] = rows.to(w.dtype)
        bias = getattr(table, "bias", None)
        if bias is not None:
            bias = bias.data
            bias[info.unit_offset:] = bias[:n_text].float().mean().to(bias.dtype)


def twist_init(base: str | Path, n_units: int, unit_init: UnitInit = "truncate",
               rope_theta: float | None = 10000.0, tokenizer: dict | None = None, tokenizer_hash: str = "",
               seed: int = 0, info: SlamInfo | None = None, dtype: torch.dtype = torch.float32,
               attn_implementation: str | None = "sdpa") -> tuple[nn.Module, SlamInfo]:
    """TWIST init from any HF causal LM (hub id or local folder): body kept bit for bit, vocabulary replaced.

    `info` gives another token layout (e.g. interleaved: text vocab + units + markers, with `truncate`
    copying every text row and drawing the appended ones); by default the published speech-only layout.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if info is None:
        info = SlamInfo(n_units=n_units, tokenizer=dict(tokenizer or {}), tokenizer_hash=tokenizer_hash)
    elif info.n_units != n_units:
        raise SlamError(f"n_units={n_units} disagrees with the given layout's n_units={info.n_units}")
    info.base_model = str(base)
    try:
        config = AutoConfig.from_pretrained(str(base))
    except OSError as e:
        raise SlamError(f"cannot read a model config from {str(base)!r}: {e}") from e
    # Config changes must precede construction: RoPE tables and dropout p are read in __init__.
    changes = _prepare_config(config, rope_theta)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(str(base), config=config, dtype=dtype, **kwargs)
    _zero_dropout_modules(model)
    text_vocab = model.get_input_embeddings().weight.shape[0]
    replace_vocabulary(model, info, unit_init, seed)
    if info.speech_token_id is not None:  # interleaved layout: the appended rows start at the mean text row

        init_new_rows(model, info, seed=seed)
    info.extra.update({"init": "twist", "unit_init": unit_init, "seed": seed, "text_vocab_size": text_vocab,
                       **changes})
    model.train()
    return model, info


def random_init(config: str | Path | dict | Any, n_units: int, overrides: dict | None = None,
                rope_theta: float | None = 10000.0, tokenizer: dict | None = None, tokenizer_hash: str = "",
                seed: int = 0, info: SlamInfo | None = None, dtype: torch.dtype = torch.float32,
                attn_implementation: str | None = "sdpa") -> tuple[nn.Module, SlamInfo]:
    """GSLM-style ablation: the architecture only, every weight random (seeded).

    `config` is a model type ("qwen2", "llama", "opt", "gpt_neox"), a folder or hub id whose config.json is
    used, a config dict (with "model_type") or an HF config object; `overrides` sets fields (hidden_size...).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    overrides = dict(overrides or {})
    if isinstance(config, PretrainedConfig):
        cfg = config.__class__.from_dict({**config.to_dict(), **overrides})
    elif isinstance(config, dict):
        d = {**config, **overrides}
        if "model_type" not in d:
            raise SlamError("a config dict for random_init needs a 'model_type'")
        cfg = _config_for(d.pop("model_type"), d)
    elif str(config) in CONFIG_MAPPING:
        cfg = _config_for(str(config), overrides)
    else:
        try:
            cfg = AutoConfig.from_pretrained(str(config), **overrides)
        except OSError as e:
            raise SlamError(f"{str(config)!r} is neither a model type nor a model folder/hub id: {e}") from e
    if info is None:
        info = SlamInfo(n_units=n_units, tokenizer=dict(tokenizer or {}), tokenizer_hash=tokenizer_hash)
    cfg.vocab_size = info.vocab_size
    cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = info.pad_id, info.bos_id, info.eos_id
    changes = _prepare_config(cfg, rope_theta)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kwargs)
            if next(model.parameters()).device.type != "meta":  # shapes that build but cannot run (hidden 30
                with torch.no_grad():                               # over 4 heads) fail here, not at step 1
                    model(input_ids=torch.tensor([[info.bos_id, info.eos_id]]), use_cache=False)
        except (ValueError, RuntimeError, TypeError, AttributeError) as e:
            raise SlamError(f"a {cfg.model_type} with these sizes cannot be built or run: "
                            f"{' '.join(str(e).split())[:200]}") from None
    _zero_dropout_modules(model)
    _set_special_ids(model, info)
    info.base_model = None
    info.extra.update({"init": "random", "seed": seed, "model_type": cfg.model_type, **changes})
    model.train()
    return model, info


def _config_for(model_type: str, fields: dict) -> Any:
    """An HF config of `model_type` with `fields`; an unknown type or a field the type does not have is an
    error (HF would keep an unknown field as a silent attribute: a typo like `hidden_sise` trains the default)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise SlamError(f"model_type {model_type!r} is not a transformers model type (e.g. qwen2, llama, opt, "
                        f"gpt_neox)")
    cls = CONFIG_MAPPING[model_type]
    known = (set(cls().to_dict()) | set(getattr(cls, "attribute_map", {}))
             | set(inspect.signature(cls.__init__).parameters) | {"rope_theta", "rope_scaling"})
    unknown = sorted(k for k in fields if k not in known)
    if unknown:
        raise SlamError(f"{model_type} configs have no field {', '.join(unknown)}")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, TypeError) as e:
        raise SlamError(f"{model_type} config: {' '.join(str(e).split())[:200]}") from None


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


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tied head counts once), as the paper counts them (358,347,904 for Slam)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


__all__ = ["twist_init", "random_init", "save_model", "embed_tokenizer_files", "load_model", "convert_slamkit",
           "replace_vocabulary", "zero_dropout", "set_rope_theta", "is_slamkit_folder", "count_parameters"]
