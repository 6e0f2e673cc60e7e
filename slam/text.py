"""Text tokenizers: loading an HF tokenizer folder the way its own config says, and the one inside a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slam.errors import SlamError
from slam.tokens import SlamInfo, require_interleaved


def load_text_tokenizer(path: str | Path) -> Any:
    """An HF tokenizer folder or hub id. The class named in tokenizer_config.json wins: in a folder that also
    holds a model config (a slam text LM), AutoTokenizer picks the model family's class (Qwen2Tokenizer) and
    rebuilds it from the vocabulary, which turns a word-level tokenizer into nonsense ("Ben met" -> "a a")."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        cfg = Path(str(path)) / "tokenizer_config.json"
        name = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.is_file() else None
        cls = tokenizer_class_from_name(name) if name else None
        return (cls or AutoTokenizer).from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SlamError(f"cannot load a text tokenizer from {str(path)!r}: {e}") from e



def model_text_tokenizer(info: SlamInfo, model_dir: str | Path) -> Any:
    """The text tokenizer saved inside an interleaved model folder."""
    require_interleaved(info)
    if not info.text_tokenizer:
        raise SlamError(f"{model_dir}: slam.json names no text tokenizer")
    return load_text_tokenizer(Path(model_dir) / info.text_tokenizer)
