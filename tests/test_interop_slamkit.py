"""slamkit's files into slam, through `slam import-slamkit`: a features jsonl (units + duration) and a tokens
jsonl (audio_repr) into units datasets that carry the named tokenizer (so training and the layout check
work as on slam's own datasets), and a preference jsonl (prompt_path / chosen_path / rejected_path, or
their units) into `slam dpo` data. The files are written in slamkit's layouts (its example_data/ and
cli/preference_alignment_feature_extractor.py)."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from conftest import synth_speechlike
from slam.audio import load_audio
from slam.cli import main
from slam.tokens import SlamInfo
from slam.units.dataset import load_table, read_meta
from slam.units.tokenizer import load_tokenizer, tokenize
from tiny import TINY_MODEL_OVERRIDES, slam_model_folder

N_UNITS = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny slam model whose tokenizer (root/km.npz, 16 mel units) also made the slamkit files below."""
    return slam_model_folder(tmp_path_factory.mktemp("model"), N_UNITS)


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    root = tmp_path_factory.mktemp("slamkit")
    (root / "example_data" / "audio").mkdir(parents=True)
    for i in range(12):
        sf.write(root / "example_data" / "audio" / f"audio{i}.flac", synth_speechlike(0.8 + 0.1 * (i % 5), seed=i),
                 16000)
    return root


def units_of(model, path):
    return tokenize(load_tokenizer(f"mel:{model.parent / 'km.npz'}"), load_audio(path))


def test_features_and_tokens_jsonl_become_units_datasets(model, audio, tmp_path, capsys):
    km = model.parent / "km.npz"
    feats, toks = [], []
    for f in sorted((audio / "example_data" / "audio").glob("*.flac")):
        u, d = units_of(model, f)
        name = f"../example_data/audio/{f.name}"  # slamkit writes the path it was given
        feats.append({"units": u.tolist(), "duration": d.tolist(), "file_name": name})
        toks.append({"file_name": name, "audio_repr": "".join(f"<Un{x}>" for x in u)})
    (tmp_path / "features.jsonl").write_text("".join(json.dumps(x) + "\n" for x in feats))
    (tmp_path / "tokens.jsonl").write_text("".join(json.dumps(x) + "\n" for x in toks))
    for kind in ("features", "tokens"):
        out = tmp_path / f"{kind}-units"
        assert main(["import-slamkit", "units", str(tmp_path / f"{kind}.jsonl"), "--tokenizer", f"mel:{km}",
                     "--out", str(out)]) == 0
        rows = load_table(out).to_pylist()
        assert [r["id"] for r in rows] == sorted(f"example_data/audio/audio{i}" for i in range(12))
        by_id = {r["id"]: r for r in rows}
        for x in feats:
            r = by_id["example_data/audio/" + x["file_name"].rsplit("/", 1)[1][:-5]]
            assert r["units"] == x["units"]
            assert r["durations"] == (x["duration"] if kind == "features" else [1] * len(x["units"]))
        meta = read_meta(out)
        assert meta["tokenizer_hash"] == SlamInfo.load(model).tokenizer_hash and meta["n_units"] == N_UNITS
        # the dataset names its tokenizer: loading it back gives the same hash
        assert load_tokenizer(meta["tokenizer"], root=out).hash == meta["tokenizer_hash"]
    # the same audio through `slam tokenize` gives the same rows (ids aside): one format, two ways in
    assert main(["tokenize", str(audio / "example_data" / "audio"), "--tokenizer", f"mel:{km}", "--out",
                 str(tmp_path / "native"), "--workers", "1"]) == 0
    native = {r["id"]: r["units"] for r in load_table(tmp_path / "native").to_pylist()}
    assert {f"example_data/audio/{k}": v for k, v in native.items()} == {
        r["id"]: r["units"] for r in load_table(tmp_path / "features-units").to_pylist()}
    # imported units train like slam's own: the run's model carries the tokenizer
    run = tmp_path / "run"
    assert main(["train", "tiny-cpu", f"data.train=[{{path: {tmp_path / 'features-units'}}}]", f"out={run}",
                 "data.context=32", "data.val_fraction=0.2", *TINY_MODEL_OVERRIDES, "batch.size=2",
                 "batch.micro=2", "budget.steps=2", "schedule.warmup_min_steps=1", "eval.every_steps=0",
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0"]) == 0
    assert SlamInfo.load(run / "final").tokenizer_hash == meta["tokenizer_hash"]
    capsys.readouterr()
    # units outside the named tokenizer (a 500-unit file imported with a 16-unit tokenizer): one line, exit 2
    (tmp_path / "wrong.jsonl").write_text(json.dumps({"file_name": "a.wav", "audio_repr": "<Un3><Un499>"}) + "\n")
    assert main(["import-slamkit", "units", str(tmp_path / "wrong.jsonl"), "--tokenizer", f"mel:{km}",
                 "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrong.jsonl:1" in err and "499" in err and len(err.splitlines()) == 1
    (tmp_path / "inter.jsonl").write_text(json.dumps({"file_name": "a.wav", "audio_repr": "<Un3>hello<Un4>"}) + "\n")
    assert main(["import-slamkit", "units", str(tmp_path / "inter.jsonl"), "--tokenizer", f"mel:{km}",
                 "--out", str(tmp_path / "inter")]) == 2


def test_preference_jsonl_feeds_slam_dpo(model, audio, tmp_path, capsys):
    km = model.parent / "km.npz"
    wavs = sorted((audio / "example_data" / "audio").glob("*.flac"))
    lines = [{"prompt_path": f"{audio}/example_data/audio/{wavs[3 * i].name}",
              "chosen_path": f"{audio}/example_data/audio/{wavs[3 * i + 1].name}",
              "rejected_path": f"{audio}/example_data/audio/{wavs[3 * i + 2].name}",
              "prompt_text": f"prompt {i}"} for i in range(4)]
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "prefs"
    assert main(["import-slamkit", "prefs", str(tmp_path / "prefs.jsonl"), "--tokenizer", f"mel:{km}",
                 "--out", str(out)]) == 0
    rows = {r["id"]: r for r in load_table(out / "units").to_pylist()}
    assert sorted(rows) == sorted(f"pair-{n:07d}-{f}" for n in range(1, 5) for f in ("prompt", "chosen", "rejected"))
    assert rows["pair-0000001-chosen"]["units"] == units_of(model, wavs[1])[0].tolist()
    assert rows["pair-0000001-prompt"]["text"] == "prompt 0"
    # the extractor's output form (units as audio_repr) imports without audio
    done = [{**x, "prompt": {"audio_repr": "".join(f"<Un{u}>" for u in rows[f"pair-{i + 1:07d}-prompt"]["units"])},
             "chosen": "".join(f"<Un{u}>" for u in rows[f"pair-{i + 1:07d}-chosen"]["units"]),
             "rejected": {"audio_repr": "".join(f"<Un{u}>" for u in rows[f"pair-{i + 1:07d}-rejected"]["units"])}}
            for i, x in enumerate(lines)]
    (tmp_path / "done.jsonl").write_text("".join(json.dumps(x) + "\n" for x in done))
    assert main(["import-slamkit", "prefs", str(tmp_path / "done.jsonl"), "--tokenizer", f"mel:{km}",
                 "--out", str(tmp_path / "done")]) == 0
    assert {r["id"]: r["units"] for r in load_table(tmp_path / "done" / "units").to_pylist()} == \
        {k: r["units"] for k, r in rows.items()}
    capsys.readouterr()
    run = tmp_path / "dpo"
    assert main(["dpo", "slam-dpo", f"model={model}", f"data.train={out / 'units'}", f"out={run}",
                 "data.val_fraction=0", "batch.size=2", "batch.micro=2", "budget.steps=2", "eval.every_steps=0",
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "precision=fp32"]) == 0
    assert "slam dpo: 2 steps" in capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt_path": "a.wav"}) + "\n")
    assert main(["import-slamkit", "prefs", str(tmp_path / "bad.jsonl"), "--tokenizer", f"mel:{km}",
                 "--out", str(tmp_path / "bad")]) == 2
