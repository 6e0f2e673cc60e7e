"""GenPPL protocols: the effect of each of the six choices on which slam's protocol differs from slamkit's.

    .venv/bin/python bench/genppl_protocol.py [--prompts 8] [--new 150] [--seeds 0 1 2]

Runs slam.eval.genppl.evaluate_genppl on one tiny random speech LM (mel tokenizer fitted on espeak-ng
speech, 40 units), a tiny random Whisper that knows two languages (English and French, so language detection
has a choice to make) and a tiny random Llama text LM: the paper protocol, the paper protocol with one
choice switched to slam's (six runs), and slam's protocol. Everything is random, so the numbers show how much
each choice moves GenPPL / auto-BLEU / transcript length on identical inputs, not what a trained model gets.
Choice 5 (text LM in bf16) is measured by casting the text LM to bf16 on the CPU, which is what slam's
protocol does on CUDA (on a CPU slam's protocol keeps float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from eval_helpers import _byte_vocab, mel_model_folder, tiny_text_lm  # noqa: E402
from slam.eval.genppl import PROTOCOLS, TextLM, WhisperASR, evaluate_genppl  # noqa: E402
from slam.model_folder import load_for_inference, load_model_tokenizer  # noqa: E402
from slam.vocoder import load_vocoder  # noqa: E402

TEXTS = ("the quick brown fox jumps over the lazy dog", "a speech model learns from sound alone",
         "the lazy dog sleeps all day long in the sun", "once upon a time there was a little cat",
         "she opened the door and looked outside", "the children played in the park after school",
         "he forgot his keys at home again today", "the rain stopped and the birds began to sing")
CHOICES = {"sample_eos": False, "prompt_durations": "keep", "asr_language": "en", "strip": True,
           "text_lm_dtype": "auto", "autobleu_words": "regex"}


def two_language_whisper(folder: Path, seed: int = 0, space_bias: float = 6.0) -> Path:
    """A random 1-layer Whisper with <|en|> and <|fr|>: without a forced language it detects one of them."""
    from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|transcribe|>", "<|translate|>",
                "<|notimestamps|>"]
    vocab = _byte_vocab(specials)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=specials[0],
                           bos_token=specials[0], eos_token=specials[0], pad_token=specials[0])
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(folder)
    eot = vocab["<|endoftext|>"]
    cfg = WhisperConfig(vocab_size=len(vocab), num_mel_bins=80, encoder_layers=1, decoder_layers=1, d_model=32,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=1500, max_target_positions=64, pad_token_id=eot, bos_token_id=eot,
                        eos_token_id=eot, decoder_start_token_id=vocab["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(cfg)
    with torch.no_grad():  # weights large enough that the transcript depends on the audio
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    gc = model.generation_config
    gc.lang_to_id = {"<|en|>": vocab["<|en|>"], "<|fr|>": vocab["<|fr|>"]}
    gc.task_to_id = {"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]}
    gc.no_timestamps_token_id = vocab["<|notimestamps|>"]
    gc.is_multilingual, gc._from_model_config, gc.begin_suppress_tokens, gc.max_length = True, False, None, 40
    # word-like transcripts: lower-case letters, space and a few marks only (every other byte suppressed)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    b2u = bytes_to_unicode()
    keep = {vocab[b2u[ord(c)]] for c in "abcdefghijklmnopqrstuvwxyz .,'"}
    gc.suppress_tokens = [i for i in range(eot) if i not in keep]
    with torch.no_grad():  # a bias toward the space byte (through the final norm), so transcripts have words
        e = model.model.decoder.embed_tokens.weight[vocab[b2u[ord(" ")]]]
        model.model.decoder.layer_norm.bias.copy_(space_bias * e / e.norm() ** 2)
    model.save_pretrained(folder)
    return folder


def run(proto, model, info, tok, vocoder, prompts, whisper, lm, n, new, seed):
    asr = WhisperASR(str(whisper), language=proto.asr_language, strip=proto.strip, max_new_tokens=None)
    text_lm = TextLM(str(lm), dtype="float32")
    if proto.text_lm_dtype == "auto":  # what the slam protocol runs on CUDA
        text_lm.model.to(torch.bfloat16)
    r = evaluate_genppl(model, info, prompts, tokenizer=tok, vocoder=vocoder, asr=asr, text_lm=text_lm,
                        protocol=proto, n_prompts=n, max_new_tokens=new, seed=seed, progress=False,
                        dedup=bool(info.tokenizer.get("dedup", True)))
    words = np.mean([len(s["text"].split()) for s in r["samples"]])
    return {"genppl": r["value"], "auto_bleu": r["auto_bleu"], "n": r["n"], "n_eos": r["n_eos"],
            "units": float(np.mean([len(s["units"]) for s in r["samples"]])),
            "seconds": float(np.mean([s["seconds"] for s in r["samples"]])), "words": float(words)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--new", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        folder, wavs = mel_model_folder(root / "m", texts=TEXTS[: args.prompts])
        whisper, lm = two_language_whisper(root / "whisper"), tiny_text_lm(root / "lm")
        model, info = load_for_inference(folder, device="cpu")
        tok = load_model_tokenizer(info, folder, None)
        vocoder = load_vocoder(info, folder)
        paper = PROTOCOLS["paper"]
        variants = [("paper", paper)] + [(f"paper, {k}={v!r}", dataclasses.replace(paper, name=f"paper-{k}", **{k: v}))
                                         for k, v in CHOICES.items()] + [("slam", PROTOCOLS["slam"])]
        rows = []
        for label, proto in variants:
            per_seed = [run(proto, model, info, tok, vocoder, wavs[0].parent, whisper, lm, args.prompts, args.new, s)
                        for s in args.seeds]
            mean = {k: float(np.mean([p[k] for p in per_seed])) for k in per_seed[0]}
            rows.append((label, mean))
            print(f"{label:42s} GenPPL {mean['genppl']:9.2f}  auto-BLEU {mean['auto_bleu']:.3f}  "
                  f"units {mean['units']:6.1f}  eos {mean['n_eos']:.1f}/{args.prompts}  audio {mean['seconds']:.2f} s  "
                  f"words {mean['words']:.1f}", flush=True)
    print(f"({args.prompts} prompts x seeds {args.seeds}, {args.new} new units; {platform.machine()}, "
          f"torch {torch.__version__})")


if __name__ == "__main__":
    main()
