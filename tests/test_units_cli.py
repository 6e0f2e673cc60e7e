"""`slam tokenize` / `slam fit-kmeans` as a user calls them: the dataset, rejects, workers, shards, refusal of
a different tokenizer, and kill -9 + rerun == one uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from conftest import synth_speechlike
from slam.audio import load_audio
from slam.cli import main
from slam.units.dataset import load_table, read_meta, read_rejects
from slam.units.tokenizer import load_tokenizer, tokenize

N_GOOD = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 short speech-like files in mixed formats/rates, 3 bad ones, a manifest, and a fitted mel k-means."""
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    for i in range(N_GOOD):
        sub = audio / f"spk{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        sr = (16000, 22050, 8000)[i % 3]
        wav = synth_speechlike(0.6 + 0.1 * (i % 7), sr=sr, seed=i)
        sf.write(sub / f"utt{i:02d}.{('wav', 'flac', 'ogg')[i % 3]}", wav, sr)
    (audio / "broken.wav").write_text("not audio")
    (audio / "empty.flac").write_bytes(b"")
    sf.write(audio / "tiny.wav", np.zeros(300, np.float32), 16000)  # under one 40 ms frame
    lines = [{"audio": f"audio/spk0/utt{i:02d}.wav", "text": f"sentence {i}", "voice": "v1",
              "words": [{"word": "sentence", "start": 0.0, "end": 0.3}]} for i in range(0, N_GOOD, 3)]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert main(["fit-kmeans", str(audio), "--tokenizer", "mel", "--units", "20", "--out",
                 str(root / "km.npz"), "--max-frames", "3000"]) == 0
    return root


def tok_args(corpus, out, *extra):
    return ["tokenize", str(corpus / "audio"), "--tokenizer", f"mel:{corpus / 'km.npz'}", "--out", str(out),
            "--workers", "1", *extra]


def as_rows(folder):
    return load_table(folder).to_pylist()


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "units"
    assert main(tok_args(corpus, out, "--shard-rows", "4")) == 0
    return out


def test_dataset_contents_meta_and_rejects(corpus, reference):
    rows = as_rows(reference)
    assert len(rows) == N_GOOD and len({r["id"] for r in rows}) == N_GOOD
    assert rows[0]["id"] == "spk0/utt00"
    tok = load_tokenizer(f"mel:{corpus / 'km.npz'}")
    for r in rows[::7]:
        wav = load_audio(r["source"])
        units, durs = tokenize(tok, wav)
        assert r["units"] == units.tolist() and r["durations"] == durs.tolist()
        assert sum(r["durations"]) == len(wav) // 640 and r["seconds"] == pytest.approx(len(wav) / 16000)
    meta = read_meta(reference)
    assert meta["tokenizer_hash"] == tok.hash and meta["n_units"] == 20 and meta["frame_rate"] == 25.0
    assert meta["dedup"] is True and meta["n_utterances"] == N_GOOD and meta["n_rejected"] == 3
    assert meta["n_tokens"] == sum(len(r["units"]) for r in rows)
    # the dataset embeds its tokenizer: loading meta["tokenizer"] against the folder gives the same hash
    assert load_tokenizer(meta["tokenizer"], root=reference).hash == tok.hash
    rejects = {r["id"]: r["reason"] for r in read_rejects(reference)}
    assert set(rejects) == {"broken", "empty", "tiny"}
    assert "not a recognised audio" in rejects["broken"] and "empty file" in rejects["empty"]
    assert "too short" in rejects["tiny"]
    # plain parquet: readable without slam, with the documented column types
    t = pq.read_table(sorted(reference.glob("part-*.parquet"))[0])
    assert str(t.schema.field("units").type) == "list<element: uint16>"


def test_rerun_is_a_no_op_and_no_dedup(corpus, reference, tmp_path):
    before = as_rows(reference)
    assert main(tok_args(corpus, reference)) == 0
    assert as_rows(reference) == before
    assert main(tok_args(corpus, tmp_path / "frames", "--no-dedup")) == 0
    rows = as_rows(tmp_path / "frames")
    assert all(set(r["durations"]) == {1} for r in rows)
    assert [np.repeat(a["units"], a["durations"]).tolist() for a in before] == [r["units"] for r in rows]


def test_workers_and_shards_equal_single_run(corpus, reference, tmp_path):
    assert main(tok_args(corpus, tmp_path / "w2")[:-2] + ["--workers", "2"]) == 0
    assert as_rows(tmp_path / "w2") == as_rows(reference)
    for i in range(3):
        assert main(tok_args(corpus, tmp_path / "sh", "--shard", f"{i}/3")) == 0
    assert as_rows(tmp_path / "sh") == as_rows(reference)
    assert len(list((tmp_path / "sh").glob("part-*of003-*.parquet"))) == 3


def test_refuses_other_tokenizer_or_dedup(corpus, reference, tmp_path, capsys):
    assert main(["fit-kmeans", str(corpus / "audio"), "--tokenizer", "mel", "--units", "20", "--seed", "1",
                 "--out", str(tmp_path / "km2.npz"), "--max-frames", "3000"]) == 0
    before = (reference / "tokenizer-kmeans.npz").read_bytes()
    args = tok_args(corpus, reference)
    args[3] = f"mel:{tmp_path / 'km2.npz'}"
    assert main(args) == 2
    assert "tokenizer_hash" in capsys.readouterr().err
    assert (reference / "tokenizer-kmeans.npz").read_bytes() == before  # nothing overwritten
    assert main(tok_args(corpus, reference, "--no-dedup")) == 2
    assert "dedup" in capsys.readouterr().err


def test_manifest_fields_reach_the_dataset(corpus, tmp_path):
    args = tok_args(corpus, tmp_path / "m")
    args[1] = str(corpus / "manifest.jsonl")
    assert main(args) == 0
    rows = as_rows(tmp_path / "m")
    assert len(rows) == 10 and rows[0]["id"] == "audio/spk0/utt00"
    assert rows[0]["text"] == "sentence 0" and rows[0]["speaker"] == "v1"
    assert rows[0]["words"] == [{"word": "sentence", "start": 0.0, "end": pytest.approx(0.3)}]


SLOW_RUN = """
import sys, time
import slam.audio, slam.units.tokenize
real = slam.audio.load_audio
def slow(path, *a, **k):
    time.sleep(0.1)  # make the run long enough (~1.7 s with 2 workers) to be killed in the middle
    return real(path, *a, **k)
slam.units.tokenize.load_audio = slow
from slam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_minus_9_and_rerun_equals_uninterrupted(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    args = tok_args(corpus, out)[:-2] + ["--workers", "2", "--shard-rows", "3"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    err_file = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=err_file)
    deadline = time.time() + 60
    while len(list(out.glob("part-*.parquet"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the kill: the test would prove nothing"
    os.kill(proc.pid, signal.SIGKILL)  # the main process only, as `kill -9 PID` would
    proc.wait()
    try:  # its pool workers must not linger: the kernel kills them with their parent (PR_SET_PDEATHSIG)
        for _ in range(200):
            os.killpg(proc.pid, 0)
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("worker processes outlived the killed parent")
    except ProcessLookupError:
        pass
    err_file.close()
    err = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err and "BrokenPipe" not in err, err[-2000:]  # workers end quietly with it
    partial = load_table(out).num_rows
    assert 0 < partial < N_GOOD, "the kill must land mid-run for this test to mean anything"
    assert main(args) == 0
    assert as_rows(out) == as_rows(reference)
    assert sorted(r["id"] for r in read_rejects(out)) == ["broken", "empty", "tiny"]
    assert read_meta(out)["n_utterances"] == N_GOOD


def test_fit_kmeans_is_deterministic_and_a_complete_spec(corpus, tmp_path):
    for name in ("a", "b"):
        assert main(["fit-kmeans", str(corpus / "audio"), "--tokenizer", "mel", "--units", "20",
                     "--out", str(tmp_path / f"{name}.npz"), "--max-frames", "3000"]) == 0
    a = load_tokenizer(str(tmp_path / "a.npz"))
    assert a.hash == load_tokenizer(str(tmp_path / "b.npz")).hash == load_tokenizer(f"mel:{corpus / 'km.npz'}").hash
    assert main(["fit-kmeans", str(corpus / "audio"), "--tokenizer", "mel", "--units", "5000",
                 "--out", str(tmp_path / "c.npz"), "--max-frames", "3000"]) == 2


def test_no_audio_is_an_error_of_one_line(tmp_path, capsys):
    """An input with nothing to tokenize exits 2 (it used to exit 0 having done nothing)."""
    import pyarrow as pa

    km = tmp_path / "km.npz"
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no audio here")
    (tmp_path / "tables").mkdir()  # a folder of parquet files without an audio column
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "tables" / "t.parquet")
    (tmp_path / "empty").mkdir()
    for folder, said in (("texts", "holds no audio files"), ("tables", "no audio column"),
                         ("empty", "holds no audio files")):
        code = main(["tokenize", str(tmp_path / folder), "--tokenizer", f"mel:{km}", "--out", str(tmp_path / "u")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and said in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "u").exists()


def test_unreadable_entries_are_listed_as_rejects(corpus, tmp_path):
    """Symlink loops, dangling symlinks, FIFOs and folders named *.wav become rejects with their reason."""
    audio = tmp_path / "audio"
    audio.mkdir()
    good = sorted((corpus / "audio" / "spk0").glob("*.wav"))[:2]
    for p in good:
        (audio / p.name).write_bytes(p.read_bytes())
    (audio / "loop1.wav").symlink_to("loop2.wav")
    (audio / "loop2.wav").symlink_to("loop1.wav")
    (audio / "dangling.wav").symlink_to("nowhere.wav")
    os.mkfifo(audio / "fifo.wav")  # opening it would block for ever: never opened
    (audio / "folder.wav").mkdir()
    (audio / "sub").mkdir()
    (audio / "sub" / "back").symlink_to("..")  # a folder loop
    out = tmp_path / "units"
    assert main(["tokenize", str(audio), "--tokenizer", f"mel:{corpus / 'km.npz'}", "--out", str(out),
                 "--workers", "1"]) == 0
    assert sorted(r["id"] for r in as_rows(out)) == sorted(p.stem for p in good)
    reasons = {r["id"]: r["reason"] for r in read_rejects(out)}
    assert set(reasons) == {"loop1", "loop2", "dangling", "fifo", "folder", "sub/back"}, reasons
    assert "symlink loop" in reasons["loop1"] and "dangling symlink" in reasons["dangling"]
    assert "FIFO" in reasons["fifo"] and "is a folder" in reasons["folder"] and "symlink loop" in reasons["sub/back"]
    assert read_meta(out)["n_rejected"] == 6


def test_rows_are_flushed_by_time_as_well(corpus, reference, tmp_path):
    """With shards far larger than the run (--shard-rows 10000), rows still reach disk every --flush-seconds,
    so a kill -9 loses at most that much work; the rerun completes the dataset exactly."""
    out = tmp_path / "timed"
    args = tok_args(corpus, out, "--shard-rows", "10000", "--flush-seconds", "0.3")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    err_file = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_RUN, *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=err_file)
    deadline = time.time() + 60
    while not list(out.glob("part-*.parquet")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the kill: the test would prove nothing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = load_table(out).num_rows
    # 33 files at 0.1 s each is > 3 s of work; a flush every 0.3 s leaves at most ~3 files + one chunk unsaved
    assert 0 < partial < N_GOOD
    assert main(tok_args(corpus, out, "--shard-rows", "10000")) == 0
    assert as_rows(out) == as_rows(reference)


def test_fit_kmeans_prints_the_spec_the_readme_uses(corpus, tmp_path, capsys):
    km = tmp_path / "km.npz"
    assert main(["fit-kmeans", str(corpus / "audio"), "--tokenizer", "mel", "--units", "8", "--out", str(km),
                 "--max-frames", "1000"]) == 0
    assert f"--tokenizer mel:{km} " in capsys.readouterr().out


def test_manifest_with_a_cut_last_line_or_bad_bytes(corpus, tmp_path, capsys):
    """A manifest whose last line a kill cut (no newline) is read without it; bytes that are not UTF-8 are
    one line, exit 2."""
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    cut = corpus / "cut.jsonl"
    cut.write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    try:
        assert main(tok_args(corpus, tmp_path / "u")[:1] + [str(cut)] + tok_args(corpus, tmp_path / "u")[2:]) == 0
        assert load_table(tmp_path / "u").num_rows == 4
        cut.write_bytes(b'{"audio": "audio/spk0/utt00.wav", "text": "\xff\xfe"}\n')
        capsys.readouterr()
        assert main(tok_args(corpus, tmp_path / "v")[:1] + [str(cut)] + tok_args(corpus, tmp_path / "v")[2:]) == 2
        err = capsys.readouterr().err.strip()
        assert "not UTF-8" in err and len(err.splitlines()) == 1
    finally:
        cut.unlink()
