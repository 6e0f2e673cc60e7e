"""`slam push MODEL --repo ID`, offline: the exact files a slam model needs (the embedded k-means included)
and the generated model card (recipe, data, results, slam version); the upload call is replaced, and a hub
download fetches the same files (slam.model_folder.MODEL_FILE_PATTERNS)."""

from __future__ import annotations

import fnmatch
import json

import pytest
import soundfile as sf
import yaml

import slam
import slam.push
from conftest import synth_speechlike
from slam.cli import main
from slam.model_folder import MODEL_FILE_PATTERNS
from tiny import train_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run trained on units of a real (mel) tokenizer, so its final/ embeds a k-means."""
    root = tmp_path_factory.mktemp("push")
    (root / "audio").mkdir()
    for i in range(40):
        sf.write(root / "audio" / f"{i:02d}.wav", synth_speechlike(1.0, seed=i), 16000)
    assert main(["fit-kmeans", str(root / "audio"), "--tokenizer", "mel", "--units", "16", "--out",
                 str(root / "km.npz"), "--max-frames", "1000"]) == 0
    units = root / "units"
    assert main(["tokenize", str(root / "audio"), "--tokenizer", f"mel:{root / 'km.npz'}", "--out", str(units),
                 "--workers", "1"]) == 0
    out = root / "run"
    assert main(["train", "tiny-cpu", *train_overrides(units, out, "checkpoint.every_steps=0")]) == 0
    return out


@pytest.fixture
def uploads(monkeypatch):
    calls = []

    def fake(repo, files, private, message):
        calls.append({"repo": repo, "files": {k: (v if isinstance(v, bytes) else v.read_bytes()) for k, v in files.items()},
                      "private": private, "message": message})
        return f"https://hub.example/{repo}/commit/1"

    monkeypatch.setattr(slam.push, "hub_upload", fake)
    return calls


def test_push_uploads_exactly_the_model_files_and_a_card(run, uploads, tmp_path, capsys):
    final = run / "final"
    # results from a real `slam eval` beside the model (asked for with --out)
    (tmp_path / "a").mkdir()
    pairs = []
    for i in range(4):
        for kind in ("pos", "neg"):
            sf.write(tmp_path / "a" / f"{i}{kind}.wav", synth_speechlike(0.6, seed=10 * i + len(kind)), 16000)
        pairs.append({"id": str(i), "positive": f"a/{i}pos.wav", "negative": f"a/{i}neg.wav"})
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert main(["eval", str(final), "--bench", f"toy={tmp_path / 'pairs.jsonl'}", "--out",
                 str(final / "results.json"), "--no-cache"]) == 0
    (final / ".lock").write_text("")  # what is not a model file stays home
    capsys.readouterr()
    assert main(["push", str(final), "--repo", "me/tiny-slam", "--private"]) == 0
    assert "Pushed 7 files" in capsys.readouterr().out
    (call,) = uploads
    assert call["repo"] == "me/tiny-slam" and call["private"] is True
    assert sorted(call["files"]) == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                                     "results.json", "slam.json", "tokenizer-kmeans.npz"]
    assert call["files"]["tokenizer-kmeans.npz"] == (final / "tokenizer-kmeans.npz").read_bytes()
    # a hub download (slam.model_folder._resolve_folder's allow_patterns) fetches every pushed file
    assert all(any(fnmatch.fnmatch(f, p) for p in MODEL_FILE_PATTERNS) for f in call["files"] if f != "README.md")
    card = call["files"]["README.md"].decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "slam" and "speech-language-model" in front["tags"]
    assert f"slam {slam.__version__}" in card and "slam generate me/tiny-slam" in card
    assert "## Recipe" in card and "budget:" in card and "steps: 6" in card  # the run's config.yaml
    assert "## Data" in card and "40 utterances" in card                   # the units dataset it trained on
    assert "| toy |" in card and "## Results" in card                      # the eval results table
    assert json.loads(call["files"]["results.json"])["metrics"]["toy"]["n"] == 4


def test_push_refuses_incomplete_folders_and_offline_is_one_line(run, uploads, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run / "final", broken)
    (broken / "tokenizer-kmeans.npz").unlink()
    assert main(["push", str(broken), "--repo", "me/x"]) == 2
    assert "tokenizer-kmeans.npz" in capsys.readouterr().err
    assert main(["push", str(tmp_path), "--repo", "me/x"]) == 2
    assert main(["push", str(run / "final"), "--repo", "not-a-repo"]) == 2
    assert uploads == []
    assert main(["push", str(run / "final"), "--repo", "me/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Would push") and "tokenizer-kmeans.npz" in out and uploads == []


def test_real_upload_offline_fails_in_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", str(run / "final"), "--repo", "me/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "upload failed" in err
