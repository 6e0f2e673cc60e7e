"""Speech synthesis: espeak-ng voices and word times, the resumable parallel runner, pairs, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slam.cli import main
from slam.errors import MissingDependencyError, SlamError
from slam.synth import espeak, tts
from slam.synth.tts import Utterance

TEXT = "The little dog found a red ball in the garden. She was happy."


class SineBackend:
    """A second backend, as small as one can be: one 200 Hz tone of 0.3 s per word (checks the interface)."""

    default_voices = ("low", "high")

    def synthesize(self, text, voice):
        if "fail" in text:
            raise RuntimeError("cannot say fail")
        words, sr, out, t = text.split(), 16000, [], 0.0
        f = 200.0 if voice == "low" else 400.0
        for w in words:
            out += [np.sin(2 * np.pi * f * np.arange(int(0.3 * sr)) / sr) * 0.3, np.zeros(int(0.1 * sr))]
        times = [(w, round(0.4 * i, 3), round(0.4 * i + 0.3, 3)) for i, w in enumerate(words)]
        return np.concatenate(out).astype(np.float32), times


@pytest.fixture(scope="module")
def backend():
    return espeak.EspeakBackend()


@pytest.mark.parametrize("voice", espeak.DEFAULT_VOICES)
def test_each_voice_speaks_with_plausible_duration_and_word_times(backend, voice):
    wav, words = backend.synthesize(TEXT, voice)
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.abs(wav).max() <= 1.0
    seconds = len(wav) / 16000
    assert 13 * 0.15 < seconds < 13 * 0.5  # 13 words at 120-400 words per minute
    assert [w for w, _, _ in words] == ["The", "little", "dog", "found", "a", "red", "ball", "in", "the", "garden",
                                        "She", "was", "happy"]
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts)
    for (_, s, e), (_, s2, _) in zip(words, words[1:] + [("", seconds, seconds)]):
        assert 0 <= s < e <= s2 + 1e-6 and e <= seconds
        assert np.abs(wav[int(s * 16000):int(e * 16000)]).max() > 0.02  # every word span holds speech
    # the sentence pause is silence, between "garden" and "She"
    gap = wav[int(words[9][2] * 16000) + 160:int(words[10][1] * 16000) - 160]
    assert len(gap) > 0.1 * 16000 and np.abs(gap).max() < 0.05


def test_rate_and_variant_change_the_speech(backend):
    slow, _ = backend.synthesize(TEXT, "en-us@120")
    fast, _ = backend.synthesize(TEXT, "en-us@300")
    assert len(slow) > 1.8 * len(fast)
    a, _ = backend.synthesize("Hello there.", "en-us")
    b, _ = backend.synthesize("Hello there.", "en-us+f2")
    n = min(len(a), len(b))
    assert len(a) != len(b) or not np.allclose(a[:n], b[:n])


def test_bad_voices_are_clear_errors(backend):
    for bad, msg in (("en-us+nosuch", "unknown variant"), ("zz-qq", "no voice for language"),
                     ("en us", "expected LANGUAGE"), ("en-us@20", "outside")):
        with pytest.raises(SlamError, match=msg):
            backend.synthesize("hello", bad)


def test_missing_espeak_says_how_to_install(monkeypatch):
    monkeypatch.setattr(espeak.ctypes.util, "find_library", lambda name: "/nonexistent/libespeak-ng.so")
    monkeypatch.setattr(espeak.EspeakBackend, "_lib", None)
    with pytest.raises(MissingDependencyError, match="apt-get install -y espeak-ng"):
        espeak.EspeakBackend()


def _manifest(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def test_runner_writes_wavs_manifest_rejects_and_resumes(tmp_path):
    items = [Utterance(f"u{i}", f"Tom fed the goat number {i}.", v)
             for i, v in zip(range(12), espeak.DEFAULT_VOICES * 3)] + [Utterance("empty", "", "en-us")]
    s = tts.synthesize(items, tmp_path, workers=2, progress=False)
    assert (s["written"], s["rejected"], s["skipped"]) == (12, 1, 0)
    rows = _manifest(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(f"u{i}" for i in range(12))
    for r in rows:
        wav, sr = sf.read(tmp_path / r["audio"], dtype="float32")
        assert sr == 16000 and wav.ndim == 1 and abs(len(wav) / sr - r["seconds"]) < 1e-3
        assert [w[0] for w in r["words"]] == r["text"].rstrip(".").split()
        assert r["voice"] == items[int(r["id"][1:])].voice
    # the tokenize stage reads this manifest as it is (ids, text, voice as speaker, word times)
    from slam.audio import find_audio

    found = {i: extra for i, _, extra in find_audio(tmp_path / "manifest.jsonl")}
    assert set(found) == {r["id"] for r in rows} and found["u0"]["speaker"] == espeak.DEFAULT_VOICES[0]
    assert found["u0"]["words"][0]["word"] == "Tom"
    rejects = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert rejects[0]["id"] == "empty" and "empty text" in rejects[0]["reason"]
    # a rerun skips everything; nothing is listed twice
    s = tts.synthesize(items, tmp_path, workers=2, progress=False)
    assert (s["written"], s["rejected"], s["skipped"]) == (0, 0, 13)
    assert len(_manifest(tmp_path)) == 12
    with pytest.raises(SlamError, match="twice"):
        tts.synthesize(items + items[:1], tmp_path, progress=False)
    # the same ids for other text or another voice: refused, never the stale audio
    with pytest.raises(SlamError, match="another text or voice"):
        tts.synthesize([Utterance("u1", "Something else.", items[1].voice)], tmp_path, progress=False)
    with pytest.raises(SlamError, match="another text or voice"):
        tts.synthesize([Utterance("empty", "", "en-gb")], tmp_path, progress=False)


def test_cut_manifest_line_is_repaired_and_redone(tmp_path):
    items = [Utterance(f"u{i}", f"Anna baked a cake {i}.", "en-us") for i in range(4)]
    tts.synthesize(items[:3], tmp_path, progress=False)
    with open(tmp_path / "manifest.jsonl", "a") as f:  # what a kill in the middle of a line leaves
        f.write('{"id": "u3", "audio": "wavs/u3.w')
    s = tts.synthesize(items, tmp_path, progress=False)
    assert s["written"] == 1 and sorted(r["id"] for r in _manifest(tmp_path)) == ["u0", "u1", "u2", "u3"]


def test_second_backend_is_a_plain_class(tmp_path):
    items = [Utterance("a", "one two three", "low"), Utterance("b", "please fail", "high")]
    s = tts.synthesize(items, tmp_path, backend=f"{__name__}:SineBackend", progress=False)
    assert (s["written"], s["rejected"]) == (1, 1)
    assert _manifest(tmp_path)[0]["seconds"] == pytest.approx(1.2)
    assert "cannot say fail" in (tmp_path / "rejects.jsonl").read_text()
    with pytest.raises(SlamError, match="unknown TTS backend"):
        tts.load_backend("nosuch")


def test_synthesize_pairs_and_prefs_readable_by_the_evaluation(tmp_path):
    from slam.eval.layouts import read_benchmark

    pairs = tmp_path / "text" / "pairs.jsonl"
    pairs.parent.mkdir()
    pairs.write_text("".join(json.dumps({"id": f"p{i}", "positive": f"The goats are hungry {i}.",
                                         "negative": f"The goats is hungry {i}.", "group": "agreement"}) + "\n"
                             for i in range(3)))
    target, s = tts.synthesize_pairs(pairs, tmp_path / "speech", workers=1, progress=False)
    assert target == tmp_path / "speech" / "pairs.jsonl" and s["rows_written"] == 3
    bench = read_benchmark(target)
    assert len(bench.pairs) == 3 and {p.group for p in bench.pairs} == {"agreement"}
    voice = {r["id"]: r["voice"] for r in _manifest(tmp_path / "speech")}
    for i in range(3):  # both sides of a pair in one voice, voices in turn over pairs
        assert voice[f"p{i}-positive"] == voice[f"p{i}-negative"] == espeak.DEFAULT_VOICES[i]

    prefs = tmp_path / "text" / "prefs.jsonl"
    prefs.write_text(json.dumps({"id": "q0", "prompt": "Tom went to the farm.", "chosen": "He fed the goat.",
                                 "rejected": "He fixed the rocket."}) + "\n")
    target, s = tts.synthesize_pairs(prefs, tmp_path / "prefs", voices=["en-gb+f3@150"], progress=False)
    row = json.loads(target.read_text())
    assert set(row) == {"id", "prompt", "chosen", "rejected"}
    for k in ("prompt", "chosen", "rejected"):
        assert sf.info(target.parent / row[k]).samplerate == 16000


def test_cli_text_file(tmp_path, capsys):
    text = tmp_path / "lines.txt"
    text.write_text("Mia played the drum.\n\nLeo fixed the rocket.\n")
    assert main(["synth", str(text), "--out", str(tmp_path / "o"), "--voices", "en-us,en-gb+f3", "--workers", "1"]) == 0
    rows = _manifest(tmp_path / "o")
    # id = line number, voice by line number in turn: a line keeps id and voice when the file grows
    assert [(r["id"], r["voice"]) for r in rows] == [("0000001", "en-us"), ("0000003", "en-us")]
    assert "spoke 2 utterances" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 2
    # a bad voice stops the run before anything is written or rejected
    assert main(["synth", str(text), "--out", str(tmp_path / "bad"), "--voices", "en-us+zz"]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "rejects.jsonl").exists()


def test_kill_then_resume_loses_nothing_and_lists_nothing_twice(tmp_path):
    lines = [f"Sam saw {n} boats near the harbor on day {i}." for i, n in enumerate(["two", "three"] * 150)]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slam.cli", "synth", str(text), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    man = out / "manifest.jsonl"
    while time.time() < deadline and (not man.exists() or man.read_text().count("\n") < 50):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-run
    proc.wait()
    first = man.read_text().count("\n")
    assert 50 <= first < len(lines), "the kill came too late to test anything"
    assert main(["synth", str(text), "--out", str(out), "--workers", "2"]) == 0
    rows = _manifest(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(lines)
    for r in rows:
        assert sf.info(out / r["audio"]).frames / 16000 == pytest.approx(r["seconds"], abs=1e-3)
    assert not list((out / "wavs").glob(".*.tmp"))
