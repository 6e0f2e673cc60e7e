"""`slam tokenize` on Hugging Face datasets, through the CLI: folders in the exact layouts `datasets` writes
(save_to_disk: Arrow IPC stream files + state.json + dataset_info.json; DatasetDict: one folder per split +
dataset_dict.json; parquet shards as push_to_hub writes them), built here with pyarrow since the suite
downloads nothing; and a hub id offline (one line, exit 2)."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import synth_speechlike
from slam.audio import load_audio_bytes
from slam.cli import main
from slam.units.dataset import load_table, read_meta, read_rejects
from slam.units.tokenizer import load_tokenizer, tokenize

AUDIO = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
FEATURES = {"audio": {"sampling_rate": 16000, "decode": True, "_type": "Audio"},
            "sentence": {"dtype": "string", "_type": "Value"}, "client_id": {"dtype": "string", "_type": "Value"}}
N = 10


def encoded(i: int) -> tuple[bytes, np.ndarray, int]:
    """Row i's audio as encoded bytes at a rate that is not 16 kHz (flac 22.05 kHz / wav 8 kHz)."""
    sr = (22050, 8000)[i % 2]
    wav = synth_speechlike(0.5 + 0.1 * (i % 4), sr=sr, seed=100 + i)
    buf = io.BytesIO()
    sf.write(buf, wav, sr, format=("FLAC", "WAV")[i % 2])
    return buf.getvalue(), wav, sr


def rows_table(start: int, n: int, root=None) -> pa.Table:
    cells, text, spk = [], [], []
    for i in range(start, start + n):
        if i == 3:
            cells.append({"bytes": b"this is not audio", "path": "bad.wav"})
        elif i == 5 and root is not None:  # a cell holding only a path, relative to the dataset folder
            data, _, _ = encoded(i)
            (root / "clips").mkdir(parents=True, exist_ok=True)
            (root / "clips" / "five.flac").write_bytes(data)
            cells.append({"bytes": None, "path": "clips/five.flac"})
        else:
            cells.append({"bytes": encoded(i)[0], "path": f"{i}.flac"})
        text.append(f"sentence number {i}")
        spk.append(f"spk{i % 3}")
    schema = pa.schema([("audio", AUDIO), ("sentence", pa.string()), ("client_id", pa.string())],
                       metadata={b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()})
    return pa.table({"audio": pa.array(cells, AUDIO), "sentence": text, "client_id": spk}, schema=schema)


def save_to_disk(folder, start=0, n=N, shards=2):
    """Dataset.save_to_disk's layout: data-0000k-of-0000n.arrow (IPC stream), state.json, dataset_info.json."""
    folder.mkdir(parents=True)
    table = rows_table(start, n, folder)
    names, per = [], -(-n // shards)
    for k in range(shards):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        with pa.ipc.new_stream(folder / name, table.schema) as w:
            w.write_table(table.slice(k * per, per), max_chunksize=3)
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_fingerprint": "f0", "_format_columns": None,
                                                   "_format_kwargs": {}, "_format_type": None,
                                                   "_output_all_columns": False, "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": FEATURES, "citation": "", "description": ""}))
    return folder


@pytest.fixture(scope="module")
def km(tmp_path_factory):
    root = tmp_path_factory.mktemp("km")
    for i in range(N):
        sf.write(root / f"{i}.wav", synth_speechlike(0.8, seed=i), 16000)
    assert main(["fit-kmeans", str(root), "--tokenizer", "mel", "--units", "12", "--out", str(root / "km.npz"),
                 "--max-frames", "2000"]) == 0
    return root / "km.npz"


def expected_units(km, i):
    """Row i's units as the library computes them from the same encoded bytes (resampled to 16 kHz)."""
    data, _, _ = encoded(i)
    units, _ = tokenize(load_tokenizer(f"mel:{km}"), load_audio_bytes(data, "x"))
    return units.tolist()


def test_save_to_disk_folder_any_rate_text_speaker_rejects(km, tmp_path, capsys):
    ds = save_to_disk(tmp_path / "ds")
    out = tmp_path / "units"
    assert main(["tokenize", str(ds), "--tokenizer", f"mel:{km}", "--out", str(out), "--workers", "1"]) == 0
    rows = {r["id"]: r for r in load_table(out).to_pylist()}
    assert sorted(rows) == [f"{i:09d}" for i in range(N) if i != 3]
    for i in (0, 1, 5, 9):  # flac 22.05 kHz, wav 8 kHz, the path-only cell, the second shard
        r = rows[f"{i:09d}"]
        assert r["units"] == expected_units(km, i)
        assert r["text"] == f"sentence number {i}" and r["speaker"] == f"spk{i % 3}"
    assert rows[f"{5:09d}"]["source"].endswith("clips/five.flac")
    rejects = read_rejects(out)
    assert [r["id"] for r in rejects] == ["000000003"] and "not a recognised audio" in rejects[0]["reason"]
    # resume as for folders: a rerun does nothing and says so
    capsys.readouterr()
    assert main(["tokenize", str(ds), "--tokenizer", f"mel:{km}", "--out", str(out), "--workers", "1"]) == 0
    assert f"{N} already done" in capsys.readouterr().out
    assert read_meta(out)["n_utterances"] == N - 1


def test_dataset_dict_split_and_parquet_shards_resume(km, tmp_path, capsys):
    dd = tmp_path / "dd"
    save_to_disk(dd / "train", 0, 4, shards=1)
    save_to_disk(dd / "test", 4, 6, shards=1)
    (dd / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert main(["tokenize", str(dd), "--tokenizer", f"mel:{km}", "--out", str(tmp_path / "u0")]) == 2
    assert "choose one with --split" in capsys.readouterr().err
    assert main(["tokenize", str(dd), "--split", "test", "--tokenizer", f"mel:{km}", "--out", str(tmp_path / "u1"),
                 "--workers", "1"]) == 0
    rows = load_table(tmp_path / "u1").to_pylist()
    assert len(rows) == 6 and rows[0]["text"] == "sentence number 4"

    # parquet shards as push_to_hub writes them (data/<split>-0000k-of-0000n.parquet), small row groups
    snap = tmp_path / "snap" / "data"
    snap.mkdir(parents=True)
    table = rows_table(0, N)
    pq.write_table(table.slice(0, 6), snap / "train-00000-of-00002.parquet", row_group_size=2)
    pq.write_table(table.slice(6), snap / "train-00001-of-00002.parquet", row_group_size=2)
    pq.write_table(table.slice(0, 2), snap / "test-00000-of-00001.parquet")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    base = ["--split", "train", "--tokenizer", f"mel:{km}", "--workers", "1"]
    assert main(["tokenize", str(snap.parent), *base, "--out", str(whole)]) == 0
    assert load_table(whole).num_rows == N - 1
    # half the rows (--shard 0/2), then all: the second run skips what the first wrote, the result is the same
    assert main(["tokenize", str(snap.parent), *base, "--out", str(parts), "--shard", "0/2"]) == 0
    assert main(["tokenize", str(snap.parent), *base, "--out", str(parts), "--shard", "0/2"]) == 0
    assert main(["tokenize", str(snap.parent), *base, "--out", str(parts), "--shard", "1/2"]) == 0
    assert load_table(parts).to_pylist() == load_table(whole).to_pylist()


def test_hub_dataset_offline_is_one_line(km, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["tokenize", "hf:slprl/SpokenSwag", "--split", "train", "--tokenizer", f"mel:{km}",
                 "--out", str(tmp_path / "u")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs the network" in err and "save_to_disk" in err
    assert not (tmp_path / "u").exists()


def test_fit_kmeans_on_a_saved_dataset(tmp_path, capsys):
    ds = save_to_disk(tmp_path / "ds")
    km = tmp_path / "km.npz"
    assert main(["fit-kmeans", str(ds), "--tokenizer", "mel", "--units", "8", "--out", str(km),
                 "--max-frames", "1000"]) == 0
    out = capsys.readouterr().out
    assert f"--tokenizer mel:{km}" in out and "1 unreadable files skipped" in out  # row 3's bytes are not audio
    assert main(["tokenize", str(ds), "--tokenizer", f"mel:{km}", "--out", str(tmp_path / "u"), "--workers", "1"]) == 0
    assert read_meta(tmp_path / "u")["n_units"] == 8
    assert main(["fit-kmeans", "hf:org/name", "--tokenizer", "mel", "--units", "8", "--out", str(km)]) == 2
