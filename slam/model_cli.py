"""`slam convert SRC --out DST`: a published slamkit checkpoint (folder or hub id, e.g. slprl/slam) -> a slam
model folder (plain HF Qwen2 folder + slam.json) that `AutoModelForCausalLM.from_pretrained` loads as is.

slam also reads slamkit folders directly (`slam eval slprl-slam/ ...`); converting drops the `lm.` prefix
and the nested config once, and records the speech tokenizer when you pass it with --tokenizer.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from slam.errors import SlamError

DTYPES = ("keep", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="slamkit UnitLM folder or hub id (slprl/slam, slprl/slam_scaled)")
    parser.add_argument("--out", required=True, help="slam model folder to write (replaced atomically)")
    parser.add_argument("--tokenizer", default=None,
                        help="speech tokenizer spec to record in slam.json: a JSON file or inline JSON object")
    parser.add_argument("--dtype", choices=DTYPES, default="keep", help="weight dtype to store (default: as is)")


def _read_spec(text: str | None) -> tuple[dict | None, str]:
    if not text:
        return None, ""
    p = Path(text)
    try:
        spec = json.loads(p.read_text() if p.exists() else text)
    except json.JSONDecodeError as e:
        raise SlamError(f"--tokenizer: neither a JSON file nor inline JSON ({e})") from e
    if not isinstance(spec, dict):
        raise SlamError("--tokenizer: expected a JSON object")
    return spec, str(spec.pop("hash", "") or spec.get("tokenizer_hash", ""))


def run(args: argparse.Namespace) -> int:
    import torch

    from slam.model import convert_slamkit, count_parameters, load_model

    spec, spec_hash = _read_spec(args.tokenizer)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    t0 = time.perf_counter()
    out, info = convert_slamkit(args.src, args.out, tokenizer=spec, tokenizer_hash=spec_hash, dtype=dtype)
    model, _ = load_model(out)  # read back: the written folder must load on its own
    n_params = count_parameters(model)
    dt = time.perf_counter() - t0
    print(f"Converted slamkit checkpoint {args.src} into {out}: a {model.config.model_type} with "
          f"{n_params:,} parameters ({next(model.parameters()).dtype}), vocabulary {info.vocab_size} "
          f"(pad {info.pad_id}, <s> {info.bos_id}, {info.n_units} units from id {info.unit_offset}), "
          f"in {dt:.1f}s. Files: config.json, model.safetensors, generation_config.json, slam.json"
          f"{'' if spec else '; no speech tokenizer recorded (pass --tokenizer to record one)'}.")
    return 0
