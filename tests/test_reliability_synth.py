"""Issue 15 items 2, 10, 11 for `slam synth`: environment errors stop the job and are never rejects; an
utterance's audio depends only on its text, voice and settings (any worker count, a kill and a resume);
after a kill the workers end with the parent, quietly."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slam.errors import SlamError
from slam.synth import espeak, tts
from slam.synth.tts import Utterance

TEXT = "The little dog found a red ball in the garden. She was happy."
FLAG = "SLAM_TEST_SYNTH_FAULT"  # a file path: while it exists, FaultyBackend fails as its text says


class FaultyBackend:
    """A tone per word; while the file named by $SLAM_TEST_SYNTH_FAULT exists, a text holding `enospc` or
    `emfile` raises that OSError and a text holding `die` SIGKILLs the worker (as the OOM killer would)."""

    default_voices = ("low",)

    def synthesize(self, text, voice):
        if os.path.exists(os.environ.get(FLAG, "/nonexistent")):
            if "enospc" in text:
                raise OSError(errno.ENOSPC, "No space left on device")
            if "emfile" in text:
                raise OSError(errno.EMFILE, "Too many open files")
            if "die" in text:
                os.kill(os.getpid(), signal.SIGKILL)
        if "refuse" in text:
            raise RuntimeError("cannot say that")
        words, sr = text.split(), 16000
        wav = np.concatenate([np.sin(2 * np.pi * 200 * np.arange(int(0.2 * sr)) / sr) * 0.3 for _ in words])
        return wav.astype(np.float32), [(w, round(0.2 * i, 3), round(0.2 * i + 0.2, 3)) for i, w in enumerate(words)]


def _ids(path):
    return sorted(json.loads(x)["id"] for x in path.read_text().splitlines()) if path.exists() else []


def test_same_sentence_twice_in_one_process_is_identical():
    b = espeak.EspeakBackend()
    first, words1 = b.synthesize(TEXT, "en-us@170")
    b.synthesize("Something else entirely, with a question?", "en-gb+f3@155")
    b.synthesize(TEXT, "en-us+m3@185")
    again, words2 = b.synthesize(TEXT, "en-us@170")
    assert len(first) == len(again) and first.tobytes() == again.tobytes() and words1 == words2


@pytest.mark.parametrize("workers,fault", [(1, "enospc"), (2, "emfile"), (2, "die")])
def test_environment_errors_stop_the_job_and_are_retried(tmp_path, monkeypatch, workers, fault):
    flag = tmp_path / "fault"
    flag.touch()
    monkeypatch.setenv(FLAG, str(flag))
    items = [Utterance(f"u{i:02d}", f"word {i} " + (fault if i == 9 else "ok"), "low") for i in range(24)]
    items.append(Utterance("bad", "please refuse", "low"))  # a real reject, for contrast
    out = tmp_path / "out"
    backend = f"{__name__}:FaultyBackend"
    with pytest.raises(SlamError) as err:
        tts.synthesize(items, out, backend=backend, workers=workers, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "rerun" in msg and "nothing was recorded as rejected" in msg
    want = {"enospc": "No space left on device", "emfile": "Too many open files", "die": "signal 9"}[fault]
    assert want in msg
    assert "u09" not in _ids(out / "manifest.jsonl") and "u09" not in _ids(out / "rejects.jsonl")
    flag.unlink()  # space freed / limit raised / memory back
    s = tts.synthesize(items, out, backend=backend, workers=workers, progress=False)
    assert _ids(out / "manifest.jsonl") == [f"u{i:02d}" for i in range(24)]
    assert _ids(out / "rejects.jsonl") == ["bad"] and s["total_rejected"] == 1
    assert not list((out / "wavs").glob(".*.tmp"))


def test_a_full_disk_at_the_wav_write_is_not_a_reject(tmp_path, monkeypatch):
    real, calls = tts.atomic_write_bytes, []

    def disk_fills_after_3(path, data):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(tts, "atomic_write_bytes", disk_fills_after_3)
    items = [Utterance(f"u{i}", f"Tom fed goat {i}.", "en-us") for i in range(8)]
    with pytest.raises(SlamError, match="No space left on device"):
        tts.synthesize(items, tmp_path, workers=1, progress=False)
    assert len(_ids(tmp_path / "manifest.jsonl")) == 3 and _ids(tmp_path / "rejects.jsonl") == []
    monkeypatch.setattr(tts, "atomic_write_bytes", real)
    s = tts.synthesize(items, tmp_path, workers=1, progress=False)
    assert s["written"] == 5 and len(_ids(tmp_path / "manifest.jsonl")) == 8


def test_a_full_disk_at_the_manifest_append_stops_and_the_rerun_repairs(tmp_path, monkeypatch):
    real = tts._Appender.write
    n = [0]

    def cut_after_2(self, row):
        n[0] += 1
        if n[0] > 2 and self.path.name == tts.MANIFEST:
            os.write(self.fd, b'{"id": "u2", "aud')  # what ENOSPC mid-line leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        real(self, row)

    monkeypatch.setattr(tts._Appender, "write", cut_after_2)
    items = [Utterance(f"u{i}", f"one two {i}", "low") for i in range(6)]
    with pytest.raises(SlamError, match="manifest.jsonl: No space left on device"):
        tts.synthesize(items, tmp_path, backend=f"{__name__}:FaultyBackend", progress=False)
    monkeypatch.setattr(tts._Appender, "write", real)
    tts.synthesize(items, tmp_path, backend=f"{__name__}:FaultyBackend", progress=False)
    assert _ids(tmp_path / "manifest.jsonl") == [f"u{i}" for i in range(6)]


def test_rejects_that_were_environment_errors_are_retried(tmp_path):
    items = [Utterance(f"u{i}", f"one two {i}", "low") for i in range(3)]
    (tmp_path / "rejects.jsonl").write_text(json.dumps(
        {"id": "u1", "text": "one two 1", "voice": "low", "reason": "OSError: [Errno 28] No space left on device"})
        + "\n")
    s = tts.synthesize(items, tmp_path, backend=f"{__name__}:FaultyBackend", progress=False)
    assert s["written"] == 3 and s["total_rejected"] == 0


def test_non_utf8_text_file_is_one_line(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"fine line\nbad \xff line\n")
    with pytest.raises(SlamError, match=r"t.txt:2: not UTF-8"):
        tts.read_text(tmp_path / "t.txt", ["en-us"])


def _children(pid):
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_wavs_byte_identical_across_worker_counts_and_a_kill(tmp_path):
    voices = list(espeak.DEFAULT_VOICES)
    lines = [f"Sam saw {n} boats near the harbor on day {i}, and {w} waved." for i, (n, w) in
             enumerate(zip(["two", "three", "nine"] * 40, ["Ann", "Bo", "Cy", "Di"] * 30))]
    text = tmp_path / "t.txt"
    text.write_text("\n".join(lines) + "\n")
    items = tts.read_text(text, voices)

    ref = tmp_path / "ref"
    tts.synthesize(items, ref, workers=1, progress=False)  # one process, no kill

    out = tmp_path / "out"
    err = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "slam.cli", "synth", str(text), "--out", str(out),
                             "--workers", "2"], stdout=subprocess.DEVNULL, stderr=err)
    man = out / "manifest.jsonl"
    workers, deadline = [], time.time() + 60
    while time.time() < deadline and (not man.exists() or man.read_text().count("\n") < 30):
        workers = _children(proc.pid) or workers
        time.sleep(0.005)
    workers = _children(proc.pid) or workers
    proc.send_signal(signal.SIGKILL)  # the parent only: its workers must follow by themselves
    proc.wait()
    t_kill = time.time()
    assert len(workers) >= 2
    while any(_alive(w) for w in workers) and time.time() - t_kill < 5:
        time.sleep(0.01)
    assert not any(_alive(w) for w in workers), "workers outlived the parent"
    time.sleep(0.2)
    err.close()
    first = man.read_text().count("\n")
    assert 30 <= first < len(lines), "the kill came too late to test anything"
    noise = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert "Traceback" not in noise and "BrokenPipe" not in noise, noise[-2000:]

    tts.synthesize(items, out, workers=3, progress=False)  # resume with another worker count
    names = sorted(p.name for p in (ref / "wavs").glob("*.wav"))
    assert len(names) == len(lines) and names == sorted(p.name for p in (out / "wavs").glob("*.wav"))
    differ = [n for n in names if (ref / "wavs" / n).read_bytes() != (out / "wavs" / n).read_bytes()]
    assert differ == []
    words = {r["id"]: r["words"] for r in map(json.loads, (ref / "manifest.jsonl").read_text().splitlines())}
    again = {r["id"]: r["words"] for r in map(json.loads, man.read_text().splitlines())}
    assert words == again


def test_a_killed_espeak_child_is_an_environment_error(tmp_path, monkeypatch):
    real = espeak.EspeakBackend._speak_here

    def oom_killed(self, text, voice):  # runs in the forked child, as the OOM killer would strike there
        if "goat 2" in text:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, text, voice)

    monkeypatch.setattr(espeak.EspeakBackend, "_speak_here", oom_killed)
    items = [Utterance(f"u{i}", f"Tom fed goat {i}.", "en-us") for i in range(4)]
    with pytest.raises(SlamError, match="espeak-ng child process ended without audio .signal 9"):
        tts.synthesize(items, tmp_path, workers=1, progress=False)
    assert "u2" not in _ids(tmp_path / "manifest.jsonl") and _ids(tmp_path / "rejects.jsonl") == []
    monkeypatch.setattr(espeak.EspeakBackend, "_speak_here", real)
    tts.synthesize(items, tmp_path, workers=1, progress=False)
    assert _ids(tmp_path / "manifest.jsonl") == ["u0", "u1", "u2", "u3"]


def test_cli_real_write_failure_is_one_line_exit_1_and_the_rerun_completes(tmp_path):
    """A real failing write, not a mock: RLIMIT_FSIZE (inherited by the spawned workers) makes every wav
    over 40 kB fail with EFBIG, as a full disk fails with ENOSPC; both are OSErrors of the machine."""
    import resource

    text = tmp_path / "t.txt"
    text.write_text("Hi.\nOk.\n" + "".join(f"Sam saw {i} boats near the old harbor today.\n" for i in range(6)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "slam.cli", "synth", str(text), "--out", str(out), "--workers", "2"]

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]  # the machine, not the input
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("slam synth: error: stopped:") and "File too large" in last and "rerun" in last
    assert str(out / "wavs") in last  # names the file it could not write
    assert not (out / "rejects.jsonl").exists() or _ids(out / "rejects.jsonl") == []
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(_ids(out / "manifest.jsonl")) == 8 and _ids(out / "rejects.jsonl") == []
