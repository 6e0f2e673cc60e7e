"""`slam generate MODEL_DIR --prompt AUDIO --out OUT.wav`: continue a spoken prompt and vocode the result
(slam.generate).

    slam generate MODEL_DIR --prompt AUDIO --out OUT.wav [--temperature 0.8 --top-k 25 --max-new-tokens 150
                  --repetition-penalty R --seed S --num-samples N --vocoder NAME]
    slam generate MODEL_DIR --prompt-text "Once upon a time" --out a.wav      # interleaved models
"""

from __future__ import annotations

import argparse

import torch

from slam.generate import generate_files


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="slam model folder (HF files + slam.json)")
    p.add_argument("--prompt", action="append", default=[],
                   help="prompt audio file or folder of audio files (repeatable)")
    p.add_argument("--prompt-units", action="append", default=[], metavar="UNITS_DIR[:ID]",
                   help="prompt from a units dataset row (default: its first row) instead of audio")
    p.add_argument("--prompt-text", action="append", default=[], metavar="TEXT",
                   help="interleaved models: a text prompt, continued in speech (`<s> <text> TEXT <speech>`)")
    p.add_argument("--prompt-seconds", type=float, default=None,
                   help="cut each prompt audio to its first S seconds (GenPPL uses 3.0)")
    p.add_argument("--out", required=True, help="OUT.wav; with several outputs, OUT.<prompt>.<sample>.wav")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=25)
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: draw only from the most likely units whose probability sums to P "
                        "(e.g. 0.9), after top-k; default: off")
    p.add_argument("--max-new-tokens", type=int, default=150, help="units to generate")
    p.add_argument("--repetition-penalty", type=float, default=None, help="e.g. 1.1 (the paper, after DPO)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--vocoder", default=None,
                   help="hifigan | melinv | a HiFi-GAN .pt file or folder (default: by the model's tokenizer)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer spec for a model whose slam.json names none (e.g. a published slamkit model)")
    p.add_argument("--to", choices=["speech", "text"], default="speech",
                   help="interleaved models: continue speech prompts in text (OUT gets the text, one line each)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")



def run(args: argparse.Namespace) -> int:
    options = vars(args)
    generate_files(options.pop("model_dir"), options.pop("out"), **options)
    return 0
