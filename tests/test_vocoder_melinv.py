"""The weight-free mel vocoder: resynthesised espeak speech re-tokenises to (mostly) the same units."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from eval_helpers import save_model_folder, tiny_lm
from slam.audio import load_audio
from slam.errors import SlamError
from slam.tokens import SlamInfo
from slam.units.dataset import dedup
from slam.units.kmeans import fit_kmeans
from slam.units.melkmeans import MelFeatures, MelParams
from slam.units.tokenizer import Tokenizer, load_tokenizer
from slam.vocoder import load_vocoder

TEXTS = ["the quick brown fox jumps over the lazy dog", "a speech model learns from sound alone"]


@pytest.fixture(scope="module")
def mel_model(tmp_path_factory):
    """A model folder whose slam.json names a mel tokenizer fitted on two espeak utterances."""
    root = tmp_path_factory.mktemp("melinv")
    wavs = []
    for i, text in enumerate(TEXTS):
        subprocess.run(["espeak-ng", "-w", str(root / f"{i}.wav"), text], check=True)
        wavs.append(load_audio(root / f"{i}.wav"))
    p = MelParams()
    mel = MelFeatures(p)
    km = fit_kmeans(np.concatenate([mel(w) for w in wavs]), 40, params={"kind": "mel", **p.to_dict()})
    tok = Tokenizer("mel", km, mel=mel)
    model, _ = tiny_lm(n_units=40)
    folder = root / "model"
    save_model_folder(folder, model, SlamInfo(n_units=40))
    SlamInfo(n_units=40, tokenizer=tok.save_to(folder), tokenizer_hash=tok.hash).save(folder)
    return folder, wavs


def test_resynthesis_retokenises_to_the_same_units(mel_model):
    folder, wavs = mel_model
    info = SlamInfo.load(folder)
    tok = load_tokenizer(info.tokenizer, root=folder)
    voc = load_vocoder(info, folder)  # chosen by the tokenizer kind: melinv
    assert type(voc).__name__ == "MelInverter" and voc.samples_per_frame == 640
    frames = tok.encode(wavs[1])
    units, durations = dedup(frames)
    wav = voc.vocode(units, durations)
    assert wav.dtype == np.float32 and len(wav) == len(frames) * 640 and np.abs(wav).max() <= 1.0
    again = tok.encode(wav)
    agree = float((again == frames).mean())
    p, q = np.bincount(frames, minlength=40) / len(frames), np.bincount(again, minlength=40) / len(again)
    chance = float(p @ q)  # agreement of two independent sequences with these unit frequencies
    assert agree > 0.6 and agree > 5 * chance, (agree, chance)


def test_unknown_durations_get_the_mean_or_default(mel_model):
    folder, _ = mel_model
    voc = load_vocoder(SlamInfo.load(folder), folder, "melinv")
    assert len(voc.vocode([1, 2, 3])) == 3 * 2 * 640  # default 2 frames per unit
    assert len(voc.vocode([1, 2, 3, 4], [3, 1, 0, 0])) == (3 + 1 + 2 + 2) * 640  # mean of known = 2
    np.testing.assert_array_equal(voc.vocode([5, 6], [2, 1]), voc.vocode([5, 6], [2, 1]))  # deterministic


def test_vocoder_choice_errors_name_what_fits(mel_model):
    folder, _ = mel_model
    info = SlamInfo.load(folder)
    with pytest.raises(SlamError, match="published HiFi-GAN speaks mHuBERT-25Hz units.*fitting: melinv"):
        load_vocoder(info, folder, "hifigan")
    with pytest.raises(SlamError, match=r"no vocoder fits tokenizer kind 'energy'.*hubert \(hifigan\), mel"):
        load_vocoder(SlamInfo(n_units=40, tokenizer={"kind": "energy"}), folder)
    with pytest.raises(SlamError, match="melinv vocoder inverts the mel tokenizer.*fitting: hifigan"):
        load_vocoder(SlamInfo(n_units=500, tokenizer={"kind": "hubert"}), folder, "melinv")
