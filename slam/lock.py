"""One writer per output folder: an exclusive `flock` on `OUT/.slam.lock`, held for the whole command.

    with lock_output(args.out, "synth"):      # raises SlamError (one line, exit 2) if another process holds it
        ...write into args.out...

Why flock: the kernel drops the lock when the holding process ends in any way (exit, crash, kill -9, OOM
killer), so a killed run never leaves a stale lock to be cleaned up by hand, and a rerun after a kill just
works. The lock file itself is never deleted: deleting it would let a third process lock a new file of the
same name while a second one still waits on the old inode, and two writers would run. Its content (pid,
command, start time, host) only serves the refusal message; the lock is the flock, not the file.

The descriptor is opened close-on-exec, so processes started with exec (subprocess, multiprocessing
"spawn") do not hold the lock after the parent dies. A process forked without exec shares it until it
ends, which is why forked helpers must end with their parent (slam.synth.espeak does). flock works on
local file systems and, since Linux 2.6.12, on NFS (emulated with byte-range locks).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from slam.errors import SlamError

LOCK_NAME = ".slam.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


class OutputLock:
    """A held lock on `folder`; `release()` (or leaving the `with` block) gives it back. Releasing twice is
    harmless; a process that ends without releasing releases anyway (kernel)."""

    def __init__(self, folder: Path, command: str, fd: int, path: Path | None = None) -> None:
        self.folder, self.command, self._fd = folder, command, fd
        self.path = path or folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a dropped OutputLock must not keep the folder locked
        try:
            self.release()
        except OSError:
            pass


def lock_output(folder: str | Path, command: str) -> OutputLock:
    """Take the exclusive lock on the output folder `folder` (created if missing) for `command` (e.g.
    "synth", "train"), or raise SlamError naming the process that holds it. Never waits."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SlamError(f"{folder}: the output folder is a file; pass a folder")
    return _take(folder / LOCK_NAME, folder, command)


def lock_beside(target: str | Path, command: str) -> OutputLock:
    """The same lock for a command whose output is a file and files named after it (`slam eval`'s
    results.json, `slam generate`'s OUT.wav): `TARGET.lock` beside it, so two commands writing other files
    into the same folder do not exclude each other."""
    target = Path(target)
    if target.is_dir():
        raise SlamError(f"{target}: is a folder; give the output file's name")
    return _take(target.with_name(target.name + ".lock"), target, command)


def _take(path: Path, what: Path, command: str) -> OutputLock:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise SlamError(f"{path}: cannot create the output lock ({e.strerror}); check the --out folder's "
                        f"permissions") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SlamError(f"{path}: cannot lock the output ({e.strerror})") from None
        raise SlamError(_refusal(what, path)) from None
    info = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds anyway, only the message of a refused writer is poorer
        pass
    return OutputLock(path.parent, command, fd, path)


def _refusal(folder: Path, path: Path) -> str:
    # The holder writes its pid right after taking the lock: wait up to 1 s for a live pid to show up.
    info = None
    for _ in range(20):
        info = _read_holder(path)
        if info and (info.get("host") != socket.gethostname() or _pid_alive(info["pid"])):
            break
        time.sleep(0.05)
    if not info:
        who = "another process (pid not recorded yet)"
    else:
        where = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
        who = f"pid {info['pid']}{where} (`slam {info.get('command', '?')}` since {info.get('started', '?')})"
    return (f"{folder} is being written by {who}; two writers would mix their output: wait for it to end, "
            f"stop it, or pass another --out")


def holder(folder: str | Path) -> dict[str, Any] | None:
    """Who holds the lock on `folder` now ({"pid", "command", "host", "started"}), or None if nobody."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_holder(path) or {"pid": None}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
