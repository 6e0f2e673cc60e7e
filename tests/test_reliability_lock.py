"""Issue 15 item 3: one writer per output folder (slam.lock), checked with real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from slam.errors import SlamError
from slam.lock import LOCK_NAME, holder, lock_output

HOLD = ("import sys, time\n"
        "from slam.lock import lock_output\n"
        "lock = lock_output(sys.argv[1], 'synth')\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n")

# A second writer the way a CLI command will take it: SlamError -> one line on stderr, exit 2 (slam.cli).
TRY = ("import sys\n"
       "from slam.errors import SlamError\n"
       "from slam.lock import lock_output\n"
       "try:\n"
       "    with lock_output(sys.argv[1], 'tokenize'):\n"
       "        print('got it', flush=True)\n"
       "except SlamError as e:\n"
       "    print(f'slam tokenize: error: {e}', file=sys.stderr)\n"
       "    sys.exit(2)\n")


def _start_holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_refused_naming_the_holder_then_free_after_a_kill(tmp_path):
    out = tmp_path / "out"
    a = _start_holder(out)
    try:
        b = subprocess.run([sys.executable, "-c", TRY, str(out)], capture_output=True, text=True, timeout=60)
        assert b.returncode == 2 and b.stdout == ""
        lines = b.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in b.stderr
        assert f"pid {a.pid}" in lines[0] and "slam synth" in lines[0] and str(out) in lines[0]
        assert holder(out)["pid"] == a.pid
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    # the kernel released the lock with the process: no stale lock, nothing to clean by hand
    assert holder(out) is None
    b = subprocess.run([sys.executable, "-c", TRY, str(out)], capture_output=True, text=True, timeout=60)
    assert b.returncode == 0 and b.stdout.strip() == "got it"
    assert (out / LOCK_NAME).exists()  # never deleted (see slam/lock.py)


def test_same_process_twice_and_release(tmp_path):
    lock = lock_output(tmp_path, "train")
    with pytest.raises(SlamError, match=f"pid {os.getpid()}"):
        lock_output(tmp_path, "dpo")
    lock.release()
    lock.release()  # harmless
    with lock_output(tmp_path, "dpo") as again:
        assert again.held and holder(tmp_path)["command"] == "dpo"
    assert not again.held and holder(tmp_path) is None


def test_spawned_children_do_not_keep_the_lock(tmp_path):
    # close-on-exec: a child started with exec that outlives its parent must not keep the folder locked
    code = ("import subprocess, sys\n"
            "from slam.lock import lock_output\n"
            "lock = lock_output(sys.argv[1], 'synth')\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], close_fds=False,\n"
            "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print(child.pid, flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    child = int(p.stdout.strip())
    try:
        deadline = time.time() + 10
        while holder(tmp_path) is not None and time.time() < deadline:
            time.sleep(0.05)
        assert holder(tmp_path) is None
        lock_output(tmp_path, "synth").release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_out_that_is_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SlamError, match="is a file"):
        lock_output(tmp_path / "f", "eval")
