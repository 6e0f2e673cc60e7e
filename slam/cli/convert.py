"""`slam convert SRC --out DST`: a published slamkit checkpoint (folder or hub id, e.g. slprl/slam) -> a slam
model folder (plain HF Qwen2 folder + slam.json) that `AutoModelForCausalLM.from_pretrained` loads as is.

    slam convert slprl/slam --out slam-350m \\
        --tokenizer hubert:slprl/mhubert-base-25hz@11:mhubert_base_25hz_cp_mls_cv_sp_fisher_L11_km500.bin

slam also reads slamkit folders directly (`slam eval slprl-slam/ ...` works on units); converting drops the
`lm.` prefix and the nested config once and, with --tokenizer, embeds the speech tokenizer (k-means as .npz,
its hash in slam.json) so that the folder turns audio into units on its own. A tokenizer over the published
mHuBERT-25Hz must use the published km500 (file sha256 or centroid hash, slam.units.published) unless
--own-kmeans says the model was trained on another.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from slam.errors import SlamError
from slam.model import count_parameters
from slam.model_folder import _resolve_folder, convert_slamkit, load_model
from slam.units.hubert import is_published_mhubert
from slam.units.published import require_published_kmeans
from slam.units.tokenizer import load_tokenizer

DTYPES = ("keep", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="slamkit UnitLM folder or hub id (slprl/slam, slprl/slam_scaled)")
    parser.add_argument("--out", required=True, help="slam model folder to write (replaced atomically)")
    parser.add_argument("--tokenizer", default=None,
                        help="speech tokenizer the model was trained on, as `slam tokenize --tokenizer` takes it "
                             "(e.g. hubert:MODEL@11:KMEANS.bin) or a JSON spec file; it is loaded (hash checked) "
                             "and embedded")
    parser.add_argument("--no-dedup", action="store_true",
                        help="the model was trained on frame units without dedup (published Slam models: dedup)")
    parser.add_argument("--own-kmeans", action="store_true",
                        help="the model was trained on your own k-means over the published mHuBERT-25Hz (skip the "
                             "check that it is the published km500)")
    parser.add_argument("--dtype", choices=DTYPES, default="keep", help="weight dtype to store (default: as is)")


def run(args: argparse.Namespace) -> int:
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        spec, spec_hash = None, ""
        if args.tokenizer:
            p = Path(args.tokenizer)
            if p.suffix == ".json" and p.is_file():
                try:
                    raw = json.loads(p.read_text())
                except json.JSONDecodeError as e:
                    raise SlamError(f"--tokenizer {p}: not valid JSON ({e})") from e
                tok = load_tokenizer(raw, root=p.parent)
            else:
                tok = load_tokenizer(args.tokenizer)
            cfg = json.loads((_resolve_folder(args.src) / "config.json").read_text())
            n_model = int(cfg.get("vocab_size") or 0) - 2
            if tok.n_units != n_model:
                raise SlamError(f"--tokenizer has {tok.n_units} units, the model {n_model}: not its tokenizer")
            if tok.kind == "hubert" and is_published_mhubert(tok.model_ref) and not args.own_kmeans:
                # the published tokenizer is claimed: any other 500-unit k-means would pass the unit count
                # and give near-chance scores without a word
                require_published_kmeans(tok.kmeans, what="the published tokenizer (mHuBERT-25Hz + km500)")
            spec = tok.save_to(td)  # k-means as .npz (never a pickle), paths relative to td
            spec_hash = str(spec.pop("hash"))
            spec["dedup"] = not args.no_dedup
        out, info = convert_slamkit(args.src, args.out, tokenizer=spec, tokenizer_hash=spec_hash, dtype=dtype,
                                    tokenizer_root=td)
    model, _ = load_model(out)  # read back: the written folder must load on its own
    n_params = count_parameters(model)
    dt = time.perf_counter() - t0
    tok_text = (f"speech tokenizer {info.tokenizer.get('kind')} (hash {info.tokenizer_hash[:12]}) embedded"
                if spec else "no speech tokenizer recorded (pass --tokenizer to embed one)")
    print(f"Converted slamkit checkpoint {args.src} into {out}: a {model.config.model_type} with "
          f"{n_params:,} parameters ({next(model.parameters()).dtype}), vocabulary {info.vocab_size} "
          f"(pad {info.pad_id}, <s> {info.bos_id}, {info.n_units} units from id {info.unit_offset}), "
          f"in {dt:.1f}s; {tok_text}. Files: config.json, model.safetensors, generation_config.json, slam.json.")
    return 0
