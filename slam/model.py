"""Speech LMs as HF causal LMs: TWIST init from a text LM and random init (model folders: slam.model_folder).

TWIST (Hassid et al. 2023) keeps a pretrained text LM's transformer body and replaces its vocabulary by the
speech units; the Slam recipe does this on Qwen2.5-0.5B (358M parameters once the 151,936-row table shrinks
to 502 rows), with RoPE theta 10,000 instead of Qwen's 1e6 and every dropout at 0.

    model, info = twist_init("Qwen/Qwen2.5-0.5B", n_units=500)      # hub id or local folder
    model, info = random_init("qwen2", 500, overrides={"hidden_size": 256, ...})

Vocabulary rows come from the SlamInfo layout (pad 0, <s> 1, units from 2 for speech-only models; an
interleaved layout simply has a larger vocab_size and unit_offset), so one code path serves both.
`use_cache` is switched off in every config slam writes: a cache built during a packed training forward
silently lets documents attend to each other (docs/model-and-packing.md, "Attention for packed rows").
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import slam.attention  # noqa: F401  (registers the "slam_varlen" attention function with transformers)
from slam.errors import SlamError
from slam.tokens import SlamInfo, require_interleaved


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


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tied head counts once), as the paper counts them (358,347,904 for Slam)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


