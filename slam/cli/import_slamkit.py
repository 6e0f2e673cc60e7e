"""`slam import-slamkit units|prefs FILE --tokenizer SPEC --out DIR`: slamkit's jsonl files in slam's formats
(slam.units.slamkit).

    slam import-slamkit units features.jsonl --tokenizer hubert:slprl/mhubert-base-25hz@11:km500.bin --out units
    slam import-slamkit prefs prefs.jsonl --tokenizer mel:km.npz --out prefs   # then data.train=prefs/units
"""

from __future__ import annotations

import argparse

from slam.units.slamkit import import_prefs, import_units


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("units", "prefs"),
                   help="units: a features jsonl (units + duration) or tokens jsonl (audio_repr) -> a units "
                        "dataset; prefs: a preference jsonl (prompt_path/chosen_path/rejected_path, or their "
                        "units) -> OUT/units for `slam dpo data.train=`")
    p.add_argument("file", help="the slamkit jsonl file")
    p.add_argument("--tokenizer", required=True,
                   help="the tokenizer that made (or makes) the units, as `slam tokenize` takes it; recorded "
                        "with its hash so models trained on the result carry it")
    p.add_argument("--out", required=True, help="units dataset folder (units) or output folder (prefs)")
    p.add_argument("--workers", type=int, default=1, help="prefs from audio: tokenizer processes")


def run(args: argparse.Namespace) -> int:
    if args.kind == "units":
        import_units(args.file, args.tokenizer, args.out)
    else:
        import_prefs(args.file, args.tokenizer, args.out, workers=args.workers)
    return 0
