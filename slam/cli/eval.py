"""`slam eval MODEL_DIR --bench NAME=PATH ... [--genppl PROMPTS_DIR] [--out results.json]`: every requested
metric of one model in one run (slam.eval.run).

    slam eval MODEL_DIR --bench sblimp=zr2021/syntactic/dev --bench ssc=sSC --bench tsc=tSC \\
              [--genppl PROMPTS_DIR] [--out results.json] [--score mean|sum]

--bench NAME=PATH (repeatable): a ZeroSpeech 2021 lexical/syntactic split folder (scored as the official
scorer), a Spoken StoryCloze folder, slamkit's repackaged folders, a SALMon folder (`salmon=PATH`: all eight
parts; `salmon/<part>=PATH`: one) or a pairs.jsonl (see slam.eval.layouts, docs/evaluation.md).
--genppl PROMPTS_DIR: GenPPL + auto-BLEU from the first --n-prompts files cut to --prompt-seconds (see
slam.eval.genppl); the transcripts go to OUT.genppl.jsonl.
"""

from __future__ import annotations

import argparse

import torch

from slam.eval.run import evaluate_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="slam model folder (or a published slamkit folder)")
    p.add_argument("--bench", action="append", default=[], metavar="NAME=PATH",
                   help="a pairs benchmark (repeatable): ZeroSpeech sBLIMP/sWUGGY, sSC/tSC, slamkit folders, "
                        "salmon=PATH (all parts) or salmon/<part>=PATH; NAME defaults to the folder name")
    p.add_argument("--genppl", metavar="PROMPTS_DIR", default=None, help="prompt audio folder for GenPPL")
    p.add_argument("--cross-modal", action="append", default=[], metavar="NAME=PATH",
                   help="interleaved models: story cloze across modalities. PATH = a published cross-modal "
                        "StoryCloze folder (<key>_{mutual,correct,incorrect}.{wav,txt}, or subfolders of them): "
                        "NAME-t2t, NAME-t2s, NAME-s2t, NAME-s2s; or a TEXT pairs.jsonl (slam corpus bench/story): "
                        "NAME-t2s and NAME-s2t, prompts and endings spoken with espeak-ng")
    p.add_argument("--cross-modal-span", choices=["all", "ending"], default="all",
                   help="published folders: score every token after <s> (slamkit) or only the ending")
    p.add_argument("--cross-modal-work", default=None, metavar="DIR",
                   help="where the cross-modal audio goes (default: OUT's folder/crossmodal-NAME; resumable)")
    p.add_argument("--cross-modal-n", type=int, default=None, help="use only the first N cross-modal pairs")
    p.add_argument("--out", default=None, help="results.json (default: eval-results/<model>.json in the current "
                                               "folder, never inside the model's folder unless named here)")
    p.add_argument("--score", choices=["mean", "sum"], default="mean",
                   help="utterance score: mean token NLL (published) or the sum")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per scoring forward (default 16384 on a GPU, 2048 on a CPU; 0 = one at a time)")
    p.add_argument("--cache-dir", default=None, help="units cache (default ~/.cache/slam/units)")
    p.add_argument("--no-cache", action="store_true", help="tokenise every file again, write no cache")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer spec for a model whose slam.json names none (e.g. a published slamkit model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--wandb", default=None, metavar="PROJECT",
                   help="also log the metrics and generated audio to this W&B project (pip install 'slam[wandb]')")
    g = p.add_argument_group("GenPPL")
    g.add_argument("--n-prompts", type=int, default=1000)
    g.add_argument("--prompt-seconds", type=float, default=3.0)
    g.add_argument("--max-new-tokens", type=int, default=150)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int, default=25)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--asr", default=None, help="HF Whisper id or folder (default openai/whisper-large-v3-turbo)")
    g.add_argument("--text-lm", default=None, help="HF causal LM id or folder (default meta-llama/Llama-3.2-1B)")
    g.add_argument("--vocoder", default=None, help="hifigan | melinv | HiFi-GAN .pt or folder (default: by tokenizer)")
    g.add_argument("--gen-batch-size", type=int, default=32)
    g.add_argument("--genppl-protocol", choices=["paper", "slam"], default="paper",
                   help="paper: every choice as slamkit makes it (eos sampled, durations predicted, Whisper "
                        "detects the language, transcripts unstripped, text LM float32, NLTK words for "
                        "auto-BLEU); slam: 150 units always, the prompt's true timing, English, stripped, bf16 "
                        "on CUDA, regex words (docs/evaluation.md)")
    g.add_argument("--prompt-cut", choices=["seconds", "alignment"], default="seconds",
                   help="cut prompts at --prompt-seconds, or at the aligned word end nearest it (<stem>.json)")
    g.add_argument("--alignment-dir", default=None, help="folder of <stem>.json word alignments (default: beside)")
    g.add_argument("--min-file-seconds", type=float, default=None, help="skip prompt files shorter than this")
    j = p.add_argument_group("LLM-as-judge")
    j.add_argument("--judge", default=None, metavar="MODEL",
                   help="a local causal LM (hub id or folder) that scores each generated continuation")
    j.add_argument("--judge-template", default=None, metavar="FILE",
                   help="judge prompt template and score scale (JSON; default: slamkit's 1-5 instruction)")
    j.add_argument("--judge-prompts", default=None, metavar="DIR",
                   help="prompt audio for the judge (default: the --genppl folder)")
    j.add_argument("--judge-n", type=int, default=None, help="judge only the first N prompt files")



def run(args: argparse.Namespace) -> int:
    options = vars(args)
    evaluate_model(options.pop("model_dir"), **options)
    return 0
