"""`slam fit-kmeans AUDIO --tokenizer mel|hubert --units K --out FILE.npz`: the k-means of a tokenizer
(slam.units.fit).

    slam fit-kmeans corpus/ --tokenizer mel --units 200 --out km200.npz
    slam tokenize corpus/ --tokenizer mel:km200.npz --out units/
"""

from __future__ import annotations

import argparse

from slam.units.fit import fit_audio_kmeans


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="folder (searched recursively), manifest.jsonl, or a Hugging Face datasets folder "
                                 "(save_to_disk or parquet shards)")
    p.add_argument("--tokenizer", required=True, choices=("mel", "hubert"))
    p.add_argument("--units", type=int, required=True, help="number of clusters K")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--model", default="slprl/mhubert-base-25hz", help="hubert: hub id or local folder")
    p.add_argument("--layer", type=int, default=11, help="hubert: transformer layer whose output is clustered")
    p.add_argument("--max-frames", type=int, default=500_000,
                   help="frames sampled for fitting (500k = 5.6 h of audio at 25 Hz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default="logmel", choices=("logmel", "mfcc"), help="mel: frame features")
    p.add_argument("--n-mels", type=int, default=80, help="mel: mel bands")
    p.add_argument("--batch-size", type=int, default=16, help="hubert: files per forward pass")
    p.add_argument("--device", default=None, help="hubert: device (default cuda when present)")
    p.add_argument("--split", default=None, help="Hugging Face dataset: the split")
    p.add_argument("--audio-column", default=None, help="Hugging Face dataset: the audio column")



def run(args: argparse.Namespace) -> int:
    fit_audio_kmeans(args.audio, args.tokenizer, args.units, args.out, model=args.model, layer=args.layer,
                     max_frames=args.max_frames, seed=args.seed, features=args.features, n_mels=args.n_mels,
                     batch_size=args.batch_size, device=args.device, split=args.split,
                     audio_column=args.audio_column)
    return 0
