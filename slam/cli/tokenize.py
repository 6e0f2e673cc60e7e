"""`slam tokenize AUDIO --tokenizer SPEC --out DIR`: speech -> a units dataset (slam.units.tokenize).

    slam tokenize corpus/ --tokenizer mel:km.npz --out units/
    slam tokenize corpus/manifest.jsonl --tokenizer hubert:slprl/mhubert-base-25hz@11:km500.bin --out units/
    slam tokenize corpus/ --tokenizer km.npz --out units/ --shard 3/8      # machine 3 of 8, same folder
    slam tokenize saved_ds/ --split train --tokenizer mel:km.npz --out units/   # HF datasets folder
    slam tokenize hf:ORG/NAME --split train --tokenizer mel:km.npz --out units/ # streamed (slam[datasets])
"""

from __future__ import annotations

import argparse
import os

from slam.units.tokenize import tokenize_audio


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="a folder (searched recursively for wav/flac/ogg/mp3; a folder with a "
                                 "manifest.jsonl is read through it), a manifest.jsonl, a Hugging Face datasets "
                                 "folder (save_to_disk or parquet shards) or hf:ORG/NAME[:CONFIG] (streamed)")
    p.add_argument("--tokenizer", required=True,
                   help="mel:KMEANS.npz | hubert:MODEL@LAYER:KMEANS | KMEANS.npz (see slam.units.tokenizer)")
    p.add_argument("--out", required=True, help="units dataset folder (created, or resumed)")
    p.add_argument("--no-dedup", action="store_true", help="keep one unit per frame (durations all 1)")
    p.add_argument("--shard", default="0/1", help="i/n: process every n-th file starting at i (default 0/1)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes for decoding (and mel features); 1 = all in this process")
    p.add_argument("--batch-size", type=int, default=None,
                   help="HuBERT: files per forward pass (default 16 on a GPU; 1 on a CPU, where one 10 s file "
                        "already fills the cores and batching only adds padding)")
    p.add_argument("--device", default=None, help="HuBERT device (default: cuda when present, else cpu)")
    p.add_argument("--compile", action="store_true", help="HuBERT: torch.compile the forward pass")
    p.add_argument("--shard-rows", type=int, default=2048, help="rows per parquet shard")
    p.add_argument("--flush-seconds", type=float, default=30.0,
                   help="also write finished rows after this many seconds of work, so a kill loses at most that")
    p.add_argument("--split", default=None, help="Hugging Face dataset: the split (default: the only one; "
                                                 "train for the hub)")
    p.add_argument("--audio-column", default=None, help="Hugging Face dataset: the audio column (default: the "
                                                        "one of type Audio, else `audio`)")
    p.add_argument("--text-column", default=None, help="Hugging Face dataset: the transcript column (default: "
                                                       "text, transcription, sentence or normalized_text)")
    p.add_argument("--speaker-column", default=None, help="Hugging Face dataset: the speaker column (default: "
                                                          "speaker, speaker_id or client_id)")


def run(args: argparse.Namespace) -> int:
    tokenize_audio(args.audio, args.tokenizer, args.out, dedup_units=not args.no_dedup, shard=args.shard,
                   workers=args.workers, batch_size=args.batch_size, device=args.device, compile=args.compile,
                   shard_rows=args.shard_rows, flush_seconds=args.flush_seconds, split=args.split,
                   audio_column=args.audio_column, text_column=args.text_column,
                   speaker_column=args.speaker_column)
    return 0
