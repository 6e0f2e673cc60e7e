"""`slam demo [--out DIR --fast --seeds N --minutes M --fresh]`: the whole Slam recipe in miniature, on a CPU.

    slam demo --out demo-out                 # ~32 minutes on a quiet 2-core CPU; report in demo-out/report.html
    slam demo --out demo-out --seeds 3       # the same with 3 training seeds: mean and spread (~3x the training)
    slam demo --out demo-out --minutes 20    # the paper's wall-clock budget instead of steps (load-dependent)
    slam demo --out demo-fast --fast         # tiny sizes and a few steps: the CI check (~1-2 minutes)

Every step runs the real stage through its own command (`slam corpus`, `slam synth`, `slam fit-kmeans`,
`slam tokenize`, `slam train`, `slam dpo`, `slam eval`, `slam generate`), with the exact command line
recorded in the report, so any step can be repeated by hand:

  1 corpus     built-in stories (the text LM reads all of them, the first `stories` are spoken), held-out
               grammar / story-cloze / topic-cloze pairs, preference triples
  2 speech     espeak-ng in 4 voices: the spoken stories, the benchmark pairs, two held-out prompts
  3 units      weight-free log-mel tokenizer: k-means fitted on the synthesised audio, then `slam tokenize`
               (deduplicated units, as the paper)
  4 prefs      the preference triples spoken and tokenised for DPO (`slam dpo --build-prefs`)
  5 pretrain   TWIST in miniature: a text LM on the training *text* (same loop, `data.kind: text`; it needs
               only the corpus, so it starts right after step 1 and trains beside steps 2-4), then, side by
               side on the two cores, the speech LM initialised from it (TWIST) and the same speech LM from
               random init, for the same number of steps
  6 dpo        DPO of the TWIST model on the spoken preference pairs (a fifth held out); scratch and TWIST
               are evaluated on the other core meanwhile
  7 eval       `slam eval` of scratch, TWIST and TWIST+DPO on the held-out pairs (accuracy, 95% CI)
  8 generate   two held-out spoken prompts continued by each model, vocoded by the weight-free vocoder
  9 report     report.md and report.html (plots, table, findings, audio players, commands, timings)

Budgets are optimiser steps (slam/demo/plan.py), so a fixed seed gives the same numbers on any machine of the
same kind, loaded or not; `--minutes` is the wall-clock alternative, whose numbers depend on the load.

Resume: the state of every step is kept in OUT/demo.json. Running the demo again into the same folder skips
finished steps and resumes an interrupted one through its stage's own resume (synth and tokenize skip the
utterances done, train and dpo continue from their last checkpoint). `--fresh` deletes the folder's demo
outputs first. Other budgets or seeds reuse the folder's data (text, speech, units, preference pairs) and
train, evaluate and generate again; a folder made with other data settings (--fast, --seed) is refused
rather than mixed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from slam.demo import report
from slam.demo.jobs import EvalJob, Job, run_done, run_jobs
from slam.demo.plan import (BENCHMARKS, DATA_FIELDS, MODELS, STEPS, THREADS, Plan, jsonable, machine, make_plan,
                            plan_diff)
from slam.errors import MissingDependencyError, SlamError
from slam.synth import tts
from slam.utils import atomic_write_json, format_duration

STATE = "demo.json"


# --- the demo folder and its state ------------------------------------------------------------------------
class Demo:
    def __init__(self, out: Path, plan: Plan, workers: int, slam_main: Callable[[list[str]], int]) -> None:
        self.out, self.plan, self.workers = out, plan, workers
        self.slam_main = slam_main  # the `slam` command's entry point, handed down by the CLI layer
        self.state_path = out / STATE
        self.state: dict = {}
        self.lock = threading.RLock()  # the state is written from the evaluation thread beside DPO too
        self.text_job: Job | None = None  # the text LM lane, started beside the data steps (start_text_lm)
        # CPU time of the finished background runs by the step they belong to, whichever step was in front
        self.job_cpu_seconds: dict[str, float] = {}

    # paths (relative to the working folder as the user gave --out, so recorded commands read naturally)
    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def seed_dir(self, top: str, seed: int | None) -> Path:
        """OUT/top for the first training seed, OUT/top/seed<S> for the others."""
        return self.p(top) if seed is None or seed == self.plan.seed else self.p(top, f"seed{seed}")

    def run_dir(self, name: str, seed: int | None = None) -> Path:
        return self.seed_dir("runs", seed) / name

    def model_dir(self, name: str, seed: int | None = None) -> Path:
        return self.run_dir(name, seed) / "final"

    def log_path(self, name: str, seed: int | None = None) -> Path:
        return self.seed_dir("logs", seed) / f"{name}.log"

    def eval_path(self, model: str, seed: int | None = None) -> Path:
        return self.seed_dir("eval", seed) / f"{model}.json"

    def load_state(self, fresh: bool) -> None:
        if fresh and self.out.exists():
            if not self.state_path.exists() and any(self.out.iterdir()):
                raise SlamError(f"--fresh: {self.out} is not empty and holds no {STATE}; not deleting a folder "
                                f"the demo did not make (choose another --out)")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        plan = jsonable(asdict(self.plan))
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            old = self.state.get("plan", {})
            changed = {k for k in set(old) | set(plan) if old.get(k) != plan.get(k)}
            if changed & DATA_FIELDS:
                raise SlamError(f"{self.out} holds a demo made with other data settings ({plan_diff(old, plan)}); "
                                f"rerun with the same options, add --fresh to start over, or choose another --out")
            if changed:
                # other budgets or seeds: the text, speech and preference data are reused, the models are
                # trained again and everything downstream redone
                print(f"slam demo: {self.out} was made with other budgets ({plan_diff(old, plan)}); reusing its "
                      f"data, training again")
                for name in STEPS[STEPS.index("pretrain"):]:
                    self.state["steps"].pop(name, None)
                for sub in ("runs", "logs", "eval", "generate"):
                    shutil.rmtree(self.out / sub, ignore_errors=True)
                self.state["plan"] = plan
        else:
            self.state = {"plan": plan, "steps": {}}
        self.state["machine"] = machine()
        self.save()

    def save(self) -> None:
        with self.lock:
            atomic_write_json(self.state_path, self.state)

    def step_state(self, name: str) -> dict:
        return self.state["steps"].setdefault(name, {"status": "todo", "commands": [], "seconds": 0.0})

    # commands: every stage runs through the `slam` CLI, and the line run is recorded as it would be typed
    def slam(self, step: str, argv: list[str], note: str = "") -> None:
        line = "slam " + shlex.join(argv)
        self.record(step, line, note)
        print(f"\n$ {line}", flush=True)
        code = self.slam_main(argv)
        if self.text_job is not None:
            self.text_job.poll()  # start the next seed's text LM; a failed one stops the demo here
        if code != 0:
            raise SlamError(f"step {step}: `{line}` failed (exit code {code}); fix the cause and rerun the demo "
                            f"with the same --out to resume")

    def record(self, step: str, line: str, note: str) -> None:
        with self.lock:
            cmds = self.step_state(step)["commands"]
            entry = {"command": line, **({"note": note} if note else {})}
            if entry not in cmds:
                cmds.append(entry)
            self.save()

    def eval_argv(self, model: str, seed: int | None = None) -> list[str]:
        argv = ["eval", str(self.model_dir(model, seed))]
        for b in BENCHMARKS:
            argv += ["--bench", f"{b}={self.p('speech', 'bench', b, 'pairs.jsonl')}"]
        return argv + ["--out", str(self.eval_path(model, seed)), "--cache-dir", str(self.p("cache", "units"))]

    def train_argv(self, name: str, seed: int) -> list[str]:
        """`slam train` arguments of the three pre-training runs (text LM, speech LM from scratch, TWIST)."""
        pl = self.plan
        common = [f"seed={seed}", f"precision={pl.precision}"]
        if name == "text":
            return ["train", "demo-text", f"data.train=[{{path: {self.p('corpus', 'stories.txt')}}}]",
                    f"data.text_tokenizer={self.p('textlm', 'tokenizer')}", f"out={self.run_dir('text', seed)}",
                    *pl.budget("text"), *common, *pl.text_overrides]
        base = ["train", "demo-speech", f"data.train=[{{path: {self.p('units', 'train')}}}]",
                f"out={self.run_dir(name, seed)}", *pl.budget("speech"), *common]
        if name == "twist":
            # the body and sizes come from the text LM: model.config is only read for random init
            return base + [f"model.base={self.model_dir('text', seed)}", *pl.speech_overrides]
        return base + list(pl.speech_overrides)


def check_espeak() -> None:
    """Fail before any work when the TTS engine is missing, with the command that installs it."""
    try:
        tts.load_backend("espeak")  # looked up at call time: tests stand in a missing engine
    except MissingDependencyError as e:
        raise MissingDependencyError(
            f"slam demo speaks its text with espeak-ng, which is not installed here ({e}). Install it with "
            f"`sudo apt-get install -y espeak-ng` (Debian/Ubuntu; or run scripts/bootstrap.sh), then rerun "
            f"the same command.") from None


def _head(d: Demo, step: str, src: Path, n: int, dst: Path) -> None:
    """`head -n N SRC > DST`, recorded as that command."""
    d.record(step, f"head -n {n} {shlex.quote(str(src))} > {shlex.quote(str(dst))}", "")
    lines = src.read_text().splitlines(keepends=True)[:n]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(lines))


# --- the steps --------------------------------------------------------------------------------------------
def step_corpus(d: Demo) -> None:
    pl = d.plan
    d.slam("corpus", ["corpus", "--out", str(d.p("corpus")), "--stories", str(pl.text_stories), "--pairs",
                      str(pl.pairs), "--prefs", str(pl.prefs), "--seed", str(pl.seed),
                      *(["--topics", str(pl.topics)] if pl.topics else [])])
    # the spoken stories are the first of the text LM's: the story stream does not depend on how many are
    # asked for, and the benchmark pairs come from streams of their own (slam/synth/corpus.py)
    _head(d, "corpus", d.p("corpus", "stories.txt"), pl.stories, d.p("corpus", "spoken.txt"))


def step_speech(d: Demo) -> None:
    # espeak-ng's audio depends only on text, voice and settings (every utterance from a fresh engine,
    # slam/synth/espeak.py), so the split of utterances between workers does not change the data
    w = str(d.workers)
    d.slam("speech", ["synth", str(d.p("corpus", "spoken.txt")), "--out", str(d.p("speech", "train")),
                      "--workers", w])
    for b in BENCHMARKS:
        d.slam("speech", ["synth", str(d.p("corpus", "bench", b, "pairs.jsonl")), "--out",
                          str(d.p("speech", "bench", b)), "--workers", w])
    d.slam("speech", ["synth", str(d.p("corpus", "bench", "prompts.txt")), "--out", str(d.p("speech", "prompts")),
                      "--limit", str(d.plan.prompts), "--workers", w])


def kmeans_path(d: Demo) -> Path:
    return d.p("units", f"kmeans{d.plan.units}.npz")


def step_units(d: Demo) -> None:
    manifest = d.p("speech", "train", "manifest.jsonl")
    km = kmeans_path(d)
    if not km.exists():
        # `slam fit-kmeans` featurises files until it holds --max-frames, an even share of them per file, so
        # it would decode half of the 8,000 stories; the first KMEANS_FILES stories (~2 h of speech, all 4
        # voices in turn) hold enough frames and take a tenth of the time.
        # In id order: `slam synth` appends manifest lines as its workers finish, so the first lines of the
        # manifest differ from run to run (two runs' k-means differed by up to 4.1 in a centroid coordinate).
        # Every line starts with its zero-padded id ({"id": "0000001", ...): `sort` orders them by id.
        sample = d.p("speech", "train", "kmeans-sample.jsonl")  # beside the manifest: audio paths are relative
        d.record("units", f"sort {shlex.quote(str(manifest))} | head -n {d.plan.kmeans_files} > "
                          f"{shlex.quote(str(sample))}", "")
        rows = sorted(manifest.read_text().splitlines(keepends=True))[: d.plan.kmeans_files]
        sample.write_text("".join(rows))
        d.slam("units", ["fit-kmeans", str(sample), "--tokenizer", "mel", "--units", str(d.plan.units), "--out",
                         str(km), "--max-frames", str(d.plan.kmeans_frames), "--seed", str(d.plan.seed)])
    d.slam("units", ["tokenize", str(manifest), "--tokenizer", f"mel:{km}", "--out", str(d.p("units", "train")),
                     "--workers", str(d.workers)])


def dpo_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("slam.train.dpo") is not None


def step_prefs(d: Demo) -> None:
    if not dpo_available():
        d.step_state("prefs")["note"] = "skipped: `slam dpo` is not part of this version"
        return
    d.slam("prefs", ["dpo", "--build-prefs", str(d.p("corpus", "prefs.jsonl")), "--tokenizer",
                     f"mel:{kmeans_path(d)}", "--out", str(d.p("prefs")), "--workers", str(d.workers)])


def text_tokenizer(d: Demo) -> None:
    tok_dir = d.p("textlm", "tokenizer")
    if not (tok_dir / "tokenizer.json").exists():
        d.slam("pretrain", ["text-tokenizer", str(d.p("corpus", "stories.txt")), "--out", str(tok_dir)])


def start_text_lm(d: Demo) -> None:
    """Start the text LM (it needs only the corpus) in the background, beside the data steps.

    The text LM is the first half of the longer pre-training lane (text LM, then TWIST from it): started after
    the corpus, its ~6 minutes on one core overlap synthesis, k-means, tokenisation and the preference pairs
    (~7 minutes of work for both cores) instead of adding to the critical path. Its numbers do not change:
    a single-threaded run with step budgets gives the same bits whatever runs beside it. Not with --minutes,
    where sharing the cores with synthesis would cut the text LM's steps."""
    if d.plan.minutes is not None or d.step_state("pretrain")["status"] == "done":
        return
    text_tokenizer(d)
    texts = [("text", s) for s in d.plan.training_seeds()]
    if all(run_done(d.run_dir(*r)) for r in texts):
        return
    print("\nthe text LM trains in the background, beside the data steps (its progress: the pre-training step)")
    d.text_job = Job(d, texts, THREADS)
    d.text_job.poll()


def step_pretrain(d: Demo) -> None:
    text_tokenizer(d)
    # Two lanes side by side, one single-threaded run at a time each: the text LM then the TWIST speech LM
    # initialised from it, and the speech LM from scratch (which needs no text LM) beside them. Steps, not
    # minutes, decide what each run does, so the lanes need not be fair to each other, only busy.
    seeds = d.plan.training_seeds()
    lane_b = [("scratch", s) for s in seeds]
    if d.text_job is not None:  # the text LM runs are under way since the corpus step: TWIST follows them
        job_a = d.text_job
        job_a.runs += [("twist", s) for s in seeds]
        bar_runs = [(n, s) for n in ("text", "twist") for s in seeds] + lane_b
    else:
        lane_a = [(n, s) for s in seeds for n in ("text", "twist")]
        job_a, bar_runs = Job(d, lane_a, THREADS), lane_a + lane_b
    run_jobs(d, [job_a, Job(d, lane_b, THREADS)], bar_runs)
    d.text_job = None
    for seed in seeds:
        for n in ("text", "twist", "scratch"):
            log = d.log_path(n, seed)
            last = [ln for ln in log.read_text().splitlines() if ln.startswith("slam train:")] if log.exists() else []
            if last:
                print(last[-1])


def step_dpo(d: Demo) -> None:
    if not dpo_available() or not d.p("prefs", "units", "meta.json").exists():
        d.step_state("dpo")["note"] = "skipped: `slam dpo` is not part of this version"
        return
    pl = d.plan
    # DPO is single-threaded: the pre-trained models are evaluated on the other core meanwhile (step eval's
    # commands), ~2 minutes of work that would otherwise follow it
    beside = EvalJob(d, [(m, s) for s in pl.training_seeds() for m in ("scratch", "twist")], THREADS)
    beside.start()
    try:
        for seed in pl.training_seeds():
            run = d.run_dir("twist-dpo", seed)
            if run_done(run):
                continue
            argv = ["dpo", "demo-dpo", f"model={d.model_dir('twist', seed)}", f"data.train={d.p('prefs', 'units')}",
                    f"out={run}", *pl.budget("dpo"), f"data.val_fraction={pl.dpo_val_fraction:g}", f"seed={seed}",
                    f"precision={pl.precision}", *pl.dpo_overrides]
            note = ""
            if run.exists():
                argv.append("resume=true")
                note = "resumed an interrupted run"
            with threads(THREADS):
                d.slam("dpo", argv, note)
    except BaseException:
        beside.stop()
        raise
    beside.wait()


class threads:
    """torch's intra-op threads fixed for the stages run inside this process (eval, generate, DPO)."""

    def __init__(self, n: int) -> None:
        self.n, self.old = n, torch.get_num_threads()

    def __enter__(self) -> None:
        torch.set_num_threads(self.n)

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.old)


def evaluated_models(d: Demo, seed: int | None = None) -> list[str]:
    return [m for m in MODELS if (d.model_dir(m, seed) / "config.json").exists()]


def step_eval(d: Demo) -> None:
    for seed in d.plan.training_seeds():
        for m in evaluated_models(d, seed):
            if d.eval_path(m, seed).exists():
                continue
            with threads(THREADS):
                d.slam("eval", d.eval_argv(m, seed))


def prompt_files(d: Demo) -> list[Path]:
    man = d.p("speech", "prompts", "manifest.jsonl")
    rows = [json.loads(x) for x in man.read_text().splitlines() if x.strip()] if man.exists() else []
    return [d.p("speech", "prompts", r["audio"]) for r in rows[: d.plan.prompts]]


def step_generate(d: Demo) -> None:
    prompts = prompt_files(d)
    if not prompts:
        raise SlamError(f"step generate: no prompt audio in {d.p('speech', 'prompts')}")
    for m in evaluated_models(d):  # the first training seed's models
        out = d.p("generate", f"{m}.wav")
        if out.with_suffix(".units.jsonl").exists():
            continue
        argv = ["generate", str(d.model_dir(m))]
        for f in prompts:
            argv += ["--prompt", str(f)]
        argv += ["--out", str(out), "--seed", str(d.plan.seed)]
        with threads(THREADS):
            d.slam("generate", argv)


def step_report(d: Demo) -> None:
    d.record("report", f"slam report {shlex.quote(str(d.out))}", "")
    md, html = report.write_report(d.out)
    print(f"\nwrote {md} and {html}")


STEP_FUNCS: dict[str, Callable[[Demo], None]] = {
    "corpus": step_corpus, "speech": step_speech, "units": step_units, "prefs": step_prefs,
    "pretrain": step_pretrain, "dpo": step_dpo, "eval": step_eval, "generate": step_generate,
    "report": step_report,
}
TITLES = {
    "corpus": "text: stories, held-out benchmark pairs, preference triples",
    "speech": "speech: espeak-ng in 4 voices",
    "units": "units: weight-free log-mel k-means tokenizer, dedup",
    "prefs": "spoken preference pairs for DPO",
    "pretrain": "pre-training: text LM -> TWIST speech LM, and a speech LM from scratch beside it",
    "dpo": "DPO of the TWIST model",
    "eval": "evaluation: grammar, story cloze, topic cloze",
    "generate": "generation: two held-out spoken prompts continued",
    "report": "report",
}


def run_demo(out: str | Path, slam_main: Callable[[list[str]], int], fast: bool = False, seed: int = 0,
             seeds: int = 1, minutes: float | None = None, fresh: bool = False, workers: int | None = None) -> dict:
    """Run (or resume) the demo into `out`, every stage through `slam_main` (the `slam` command's entry
    point: each stage is recorded as the command line a user would type); returns its state (also in
    OUT/demo.json)."""
    if minutes is not None and minutes <= 0:
        raise SlamError(f"--minutes must be positive, got {minutes}")
    if seeds < 1:
        raise SlamError(f"--seeds must be at least 1, got {seeds}")
    check_espeak()
    d = Demo(Path(out), make_plan(fast, seed, minutes, seeds), workers or min(2, os.cpu_count() or 1), slam_main)
    d.load_state(fresh)
    t_all, c_all = time.perf_counter(), _cpu_seconds()
    try:
        for i, name in enumerate(STEPS, 1):
            run_step(d, i, name)
            if name == "corpus":
                start_text_lm(d)
    finally:
        if d.text_job is not None:  # interrupted before pre-training: the text LM resumes with the demo
            d.text_job.stop()
    d.state["wall_seconds_this_run"] = round(time.perf_counter() - t_all, 1)
    d.state["cpu_seconds_this_run"] = round(_cpu_seconds() - c_all, 1)
    d.save()
    return d.state


def run_step(d: Demo, i: int, name: str) -> None:
    st = d.step_state(name)
    if st["status"] == "done" and name != "report":
        print(f"\n[{i}/{len(STEPS)}] {TITLES[name]}: done in an earlier run ({format_duration(st['seconds'])}), "
              f"reused")
        st["reused"] = True
        return
    print(f"\n[{i}/{len(STEPS)}] {TITLES[name]}", flush=True)
    st.update(status="running", reused=False)
    d.save()
    t0, c0, j0 = time.perf_counter(), _cpu_seconds(), dict(d.job_cpu_seconds)

    def count_cpu() -> None:
        # a background run's CPU belongs to its own step (the text LM's to pre-training, the evaluations beside
        # DPO to evaluation), whichever step was in front when it ended
        jobs = {k: v - j0.get(k, 0.0) for k, v in d.job_cpu_seconds.items()}
        st["cpu_seconds"] = round(st.get("cpu_seconds", 0.0) + _cpu_seconds() - c0 - sum(jobs.values()), 1)
        for step, cpu in jobs.items():
            other = d.step_state(step)
            other["cpu_seconds"] = round(other.get("cpu_seconds", 0.0) + cpu, 1)

    try:
        STEP_FUNCS[name](d)
    except BaseException:
        st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - t0
        count_cpu()
        st["status"] = "interrupted"
        d.save()
        raise
    st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - t0
    count_cpu()
    st["status"] = "done"
    st["load_after"] = [round(x, 2) for x in os.getloadavg()]
    d.save()
    if name == "report":  # the report's own time is known only now: write it once more with it
        report.write_report(d.out)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the training runs, synth workers):
    the work done, which unlike wall time does not grow with other load on the machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
