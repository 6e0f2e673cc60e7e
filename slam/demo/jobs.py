"""Background `slam train` and `slam eval` runs of the demo, each a process of its own with a fixed thread count:
the two pre-training lanes (the text LM, started beside the data steps, then TWIST; scratch beside them) under
one progress bar, and the evaluation of the pre-trained models beside DPO."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from slam.errors import SlamError
from slam.train.run import read_metrics

Demo = Any  # slam.demo.steps.Demo (not imported: steps imports this module)


def run_done(run: Path) -> bool:
    """A `slam train`/`slam dpo` run that wrote its final model folder and its `done` event."""
    if not (run / "final" / "config.json").exists() or not (run / "metrics.jsonl").exists():
        return False
    return any('"event": "done"' in line for line in (run / "metrics.jsonl").read_text().splitlines())


def run_progress(run: Path) -> float:
    """Budget progress (0-1) of a run, from the last metrics line that has one."""
    for row in reversed(read_metrics(run)):
        if "progress" in row:
            return float(row["progress"])
    return 0.0


class Job:
    """A chain of `slam train` runs in one background process after another, `threads` threads each."""

    step = "pretrain"  # the demo step whose commands and CPU time these runs are

    def __init__(self, d: Demo, runs: list[tuple[str, int]], threads: int) -> None:
        self.d, self.runs, self.threads = d, list(runs), threads  # (name, training seed)
        self.proc: subprocess.Popen | None = None
        self.current: tuple[str, int] | None = None
        self.log = None
        self.stopped = False

    def command(self, name: str, seed: int) -> tuple[list[str], str] | None:
        """The `slam` arguments of one item and a note, or None when it is done already."""
        run = self.d.run_dir(name, seed)
        if run_done(run):
            return None
        if run.exists():  # an interrupted run continues from its last checkpoint
            return self.d.train_argv(name, seed) + ["resume=true"], "resumed an interrupted run"
        return self.d.train_argv(name, seed), ""

    def log_path(self, name: str, seed: int) -> Path:
        return self.d.log_path(name, seed)

    def start_next(self) -> bool:
        while self.runs and not self.stopped:
            name, seed = self.runs.pop(0)
            todo = self.command(name, seed)
            if todo is None:
                continue
            argv, note = todo
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                   "TOKENIZERS_PARALLELISM": "false"}
            line = f"OMP_NUM_THREADS={self.threads} slam " + shlex.join(argv)
            self.d.record(self.step, line, note)
            log_path = self.log_path(name, seed)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(log_path, "a")
            print(f"\n$ {line}    (log: {log_path})", flush=True)
            self.proc = subprocess.Popen([sys.executable, "-m", "slam.cli", *argv], stdout=self.log,
                                         stderr=subprocess.STDOUT, env=env)
            self.current = (name, seed)
            return True
        self.current = None
        return False

    def poll(self) -> bool:
        """True while this job has work running; raises when a run failed."""
        if self.proc is None:
            return self.start_next()
        # os.wait4 rather than Popen.poll: it gives this child's own CPU time, so the demo can count a run's work
        # in its own step (pre-training, evaluation) even when it finishes while another step is in front
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return True
        code = self.proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = self.d.job_cpu_seconds
        cpu[self.step] = cpu.get(self.step, 0.0) + usage.ru_utime + usage.ru_stime
        self.log.close()
        (name, seed), self.proc = self.current, None
        if code != 0:
            log = self.log_path(name, seed)
            tail = "\n".join(log.read_text().splitlines()[-8:])
            raise SlamError(f"step {self.step}: the {name} run (seed {seed}) failed (exit code {code}); "
                            f"last lines of {log}:\n{tail}")
        return self.start_next()


    def stop(self) -> None:
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class EvalJob(Job):
    """`slam eval` of finished models in the background: the pre-trained models are evaluated beside DPO, whose
    single thread would otherwise leave the second core idle for its ~4 minutes."""

    step = "eval"

    def command(self, name: str, seed: int) -> tuple[list[str], str] | None:
        return None if self.d.eval_path(name, seed).exists() else (self.d.eval_argv(name, seed), "")

    def log_path(self, name: str, seed: int) -> Path:
        return self.d.log_path(f"eval-{name}", seed)

    def start(self) -> None:
        """Work through the chain from a thread (the demo's own thread runs DPO meanwhile)."""
        self.error: BaseException | None = None

        def loop() -> None:
            try:
                while self.poll():
                    time.sleep(0.5)
            except BaseException as e:  # handed to wait(), in the demo's thread
                self.error = e

        self.thread = threading.Thread(target=loop, name="demo-eval", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        """Until every evaluation has ended; raises what failed."""
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        super().stop()
        self.thread.join(timeout=60)


def run_jobs(d: Demo, jobs: list[Job], runs: list[tuple[str, int]]) -> None:
    """Run the jobs to the end with one progress bar (budget progress of each run from its metrics)."""
    from tqdm import tqdm

    bar = tqdm(total=100.0 * len(runs), desc="pretrain", bar_format="{desc}: {percentage:3.0f}%|{bar:20}| "
               "{elapsed}<{remaining} {postfix}")
    try:
        active = [j.poll() for j in jobs]
        while any(active):
            time.sleep(2.0)
            active = [j.poll() for j in jobs]
            prog = {r: (1.0 if run_done(d.run_dir(*r)) else run_progress(d.run_dir(*r))) for r in runs}
            bar.n = 100.0 * sum(prog.values())
            bar.set_postfix_str(" | ".join(f"{n} {100 * v:.0f}%" for (n, _), v in prog.items()), refresh=False)
            bar.refresh()
    except BaseException:
        for j in jobs:
            j.stop()
        raise
    finally:
        bar.close()
