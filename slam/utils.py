"""Small shared helpers: atomic file writes, content hashes, provenance, timing strings, length batching."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from slam import __version__
from slam.errors import SlamError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_dir(final: str | Path) -> Path:
    """A temp sibling folder to fill and then `commit_dir` into place (used for checkpoints)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))


def commit_dir(tmp: Path, final: str | Path) -> None:
    """Rename a filled temp folder onto `final` (replacing an old one) so it appears all at once."""
    final = Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def read_jsonl_objects(path: str | Path, what: str = "file") -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line of a user's jsonl (pairs, preferences, imports). Strict,
    unlike `read_jsonl`: a missing file, bytes that are not UTF-8, a line that is not JSON or not an object is
    one SlamError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise SlamError(f"{what} {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SlamError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlamError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SlamError(f"{path}:{n}: each line must be a JSON object")
        rows.append((n, row))
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of an append-only jsonl (none if the file is missing). A line that does not parse was cut by a
    kill mid-append: it is skipped, and whatever it recorded is redone by the resumed job."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
    return h.hexdigest()


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One hash over several files' names (relative to root) and contents, order-independent."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        name = str(p.relative_to(root)) if root else p.name
        h.update(name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise SlamError(f"{path}: sha256 {got} does not match the pinned {expected} (wrong or corrupt file)")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict[str, Any]:
    """Code version, library versions and device: written at the top of every run folder."""
    import numpy
    import torch
    import transformers

    dev = "cpu"
    if torch.cuda.is_available():
        dev = f"cuda x{torch.cuda.device_count()}: {torch.cuda.get_device_name(0)}"
    return {
        "slam": __version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": dev,
        "argv": sys.argv,
    }


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """"24h", "90m", "30s", "1.5h" or a number of seconds -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(str(text).lower())
    if not m:
        raise SlamError(f"cannot read duration {text!r}; use e.g. 24h, 90m, 30s")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}[unit]


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def require_path(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise SlamError(f"{what} {str(p)!r} does not exist")
    return p


def length_batches(lengths: Sequence[int], max_items: int, max_padded: int,
                   longest_first: bool = False) -> list[list[int]]:
    """Indices sorted by length (ties by index; shortest first, or longest first), cut in that order into
    batches of at most `max_items` whose padded size (items x longest length) stays within `max_padded`; an
    item longer than that gets a batch of its own. Sorting keeps the padding small."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i] if longest_first else lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = max(lengths[cur[0]], lengths[i]) if cur else lengths[i]  # sorted: the longest is an end
        if cur and (len(cur) >= max_items or (len(cur) + 1) * width > max_padded):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def die_with_parent(parent: int) -> None:
    """For a worker process: have the kernel SIGKILL it when its parent ends (Linux prctl
    PR_SET_PDEATHSIG), so a killed job leaves no worker running and none prints a BrokenPipe traceback. If
    the parent ended before the prctl, end now. Elsewhere a worker notices at its next read or write."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
