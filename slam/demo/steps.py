"""`slam demo [--out DIR --minutes M --fresh --fast]`: the whole Slam recipe in miniature, on a CPU, offline.

    slam demo --out demo-out                 # ~30 minutes on a 2-core CPU; report in demo-out/report.html
    slam demo --out demo-out --minutes 20    # longer pre-training (M minutes for each speech LM)
    slam demo --out demo-fast --fast         # tiny sizes and seconds of budget: the CI check (~1-2 minutes)

Every step runs the real stage through its own command (`slam corpus`, `slam synth`, `slam fit-kmeans`,
`slam tokenize`, `slam train`, `slam dpo`, `slam eval`, `slam generate`), with the exact command line
recorded in the report, so any step can be repeated by hand:

  1 corpus     built-in stories (training text), held-out grammar / story-cloze / topic-cloze pairs, preference
               triples
  2 speech     espeak-ng in 4 voices: the stories, the benchmark pairs, two held-out prompts
  3 units      weight-free log-mel tokenizer: k-means fitted on the synthesised audio, then `slam tokenize`
               (deduplicated units, as the paper)
  4 prefs      the preference triples spoken and tokenised for DPO (`slam dpo --build-prefs`)
  5 pretrain   TWIST in miniature: a text LM on the training *text* (same loop, `data.kind: text`), then,
               side by side on the two cores, the speech LM initialised from it (TWIST) and the same
               speech LM from random init, for the same time budget
  6 dpo        a short DPO of the TWIST model on the spoken preference pairs
  7 eval       `slam eval` of scratch, TWIST and TWIST+DPO on the held-out pairs (accuracy, 95% CI)
  8 generate   two held-out spoken prompts continued by each model, vocoded by the weight-free vocoder
  9 report     report.md and report.html (plots, table, audio players, commands, timings)

Resume: the state of every step is kept in OUT/demo.json. Running the demo again into the same folder skips
finished steps and resumes an interrupted one through its stage's own resume (synth and tokenize skip the
utterances done, train and dpo continue from their last checkpoint). `--fresh` deletes the folder's demo
outputs first. Another `--minutes` reuses the folder's data (text, speech, units, preference pairs) and
trains, evaluates and generates again; a folder made with other data settings (--fast, --seed) is refused
rather than mixed.

Budget: `--minutes M` (default 16) is the pre-training time of each speech LM; the text LM gets M/4 before
the TWIST model, DPO M/6. On this 2-core machine the rest takes ~5 minutes (text, speech, units and
preference pairs ~2, evaluation of three models ~3), so the default demo takes ~28 minutes (timings per
step in the report).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from slam.demo import report
from slam.errors import MissingDependencyError, SlamError
from slam.synth import tts
from slam.train.run import read_metrics
from slam.utils import atomic_write_json, format_duration

STATE = "demo.json"
MODELS = ("scratch", "twist", "twist-dpo")
BENCHMARKS = ("grammar", "story", "topic")
STEPS = ("corpus", "speech", "units", "prefs", "pretrain", "dpo", "eval", "generate", "report")
# Plan fields that decide the data steps (corpus .. prefs): a folder made with others is never mixed with them.
# The rest (budgets, recipe overrides) only decide the training: changing them retrains on the same data.
DATA_FIELDS = {"stories", "topics", "pairs", "prefs", "units", "kmeans_frames", "kmeans_files", "prompts", "seed"}


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one demo run (stored in demo.json: a folder is only resumed with the same plan)."""

    stories: int
    """Training stories of `slam corpus` (2-5 sentences each; ~6 s of speech a story)."""
    pairs: int
    """Held-out pairs per benchmark (grammar, story, topic): 1,000 pairs give a 95% CI of about +-3 points
    (600: +-4, too wide to tell a 55% topic score from chance)."""
    prefs: int
    """Preference triples for DPO."""
    units: int
    """k of the k-means (the prototype: 200 on 25 Hz log-mel)."""
    kmeans_frames: int
    """Frames sampled to fit the k-means."""
    kmeans_files: int
    """Training utterances the k-means frames are drawn from."""
    speech_seconds: float
    """Pre-training budget of each speech LM (scratch and TWIST get the same)."""
    text_seconds: float
    """Budget of the text LM that initialises the TWIST model."""
    dpo_seconds: float
    """DPO budget."""
    prompts: int = 2
    """Held-out spoken prompts continued by each model."""
    topics: int | None = None
    """`slam corpus --topics`: the first N of its 8 topics (None = all)."""
    precision: str = "fp32"
    """`precision` of the three training runs and DPO: bf16 where the CPU has native bf16 dot products."""
    seed: int = 0
    text_overrides: tuple[str, ...] = ()
    """Extra `key=value` overrides of the demo-text recipe (--fast: a tiny model)."""
    speech_overrides: tuple[str, ...] = ()
    """Extra overrides of the demo-speech recipe (the TWIST model's sizes come from the text LM itself)."""
    dpo_overrides: tuple[str, ...] = ()


def cpu_bf16() -> bool:
    """Native bf16 dot products on this CPU (AVX512-BF16 or AMX; Linux flags). There, bf16 autocast trains the
    demo's 1.2M model 1.25x faster than fp32 on one thread (6,082 vs 4,863 tokens/s, 8 x 512; 1.48x at hidden
    256; bench/cpu_step.py), weights and AdamW state staying fp32. Elsewhere fp32 is kept: without native
    bf16, oneDNN emulates it, which was not measured to pay."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def make_plan(minutes: float, fast: bool, seed: int) -> Plan:
    s = 60.0 * minutes
    precision = "bf16" if cpu_bf16() else "fp32"
    if fast:
        s = minutes / 2  # seconds, not minutes: 8 s of pre-training at the default 16
        # seconds of everything: checks that every stage runs and every artefact is written, not quality
        tiny = ("model.config.hidden_size=32", "model.config.intermediate_size=64",
                "model.config.num_hidden_layers=2", "model.config.num_attention_heads=2",
                "model.config.num_key_value_heads=1", "batch.size=4", "batch.micro=4", "eval.every_steps=5",
                "eval.batches=2", "log_every=2",
                # 40 stories: the default 2% hold-out (chosen by document hash) can hold none out
                "data.val_fraction=0.2")
        return Plan(stories=40, pairs=12, prefs=12, units=16, kmeans_frames=5000, kmeans_files=40, topics=4,
                    precision=precision, speech_seconds=s, text_seconds=s / 4, dpo_seconds=s / 6, seed=seed,
                    text_overrides=tiny,
                    speech_overrides=tiny + ("data.context=128",),
                    dpo_overrides=("batch.size=4", "batch.micro=2", "eval.batches=2", "log_every=2"))
    # 4 of the corpus's 8 topics, as the prototype: at equal text and tokens, 8 topics left topic cloze at
    # chance (51.5%) and 4 topics reached 56.3% [52.3, 60.3] (docs/demo.md, attempts 4 and 5)
    return Plan(stories=8000, pairs=1000, prefs=1000, units=200, kmeans_frames=100_000, kmeans_files=1000,
                speech_seconds=s, text_seconds=s / 4, dpo_seconds=s / 6, seed=seed, topics=4,
                precision=precision)


# --- the demo folder and its state ------------------------------------------------------------------------
class Demo:
    def __init__(self, out: Path, plan: Plan, workers: int, slam_main: Callable[[list[str]], int]) -> None:
        self.out, self.plan, self.workers = out, plan, workers
        self.slam_main = slam_main  # the `slam` command's entry point, handed down by the CLI layer
        self.state_path = out / STATE
        self.state: dict = {}

    # paths (relative to the working folder as the user gave --out, so recorded commands read naturally)
    def p(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def run_dir(self, name: str) -> Path:
        return self.p("runs", name)

    def model_dir(self, name: str) -> Path:
        return self.run_dir(name) / "final"

    def load_state(self, fresh: bool) -> None:
        if fresh and self.out.exists():
            if not self.state_path.exists() and any(self.out.iterdir()):
                raise SlamError(f"--fresh: {self.out} is not empty and holds no {STATE}; not deleting a folder "
                                f"the demo did not make (choose another --out)")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        plan = _jsonable(asdict(self.plan))
        if self.state_path.exists():
            self.state = json.loads(self.state_path.read_text())
            old = self.state.get("plan", {})
            changed = {k for k in set(old) | set(plan) if old.get(k) != plan.get(k)}
            if changed & DATA_FIELDS:
                raise SlamError(f"{self.out} holds a demo made with other data settings ({_plan_diff(old, plan)}); "
                                f"rerun with the same options, add --fresh to start over, or choose another --out")
            if changed:
                # other budgets (e.g. --minutes): the text, speech and preference data are reused, the models
                # are trained again and everything downstream redone
                print(f"slam demo: {self.out} was made with other budgets ({_plan_diff(old, plan)}); reusing its "
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
        atomic_write_json(self.state_path, self.state)

    def step_state(self, name: str) -> dict:
        return self.state["steps"].setdefault(name, {"status": "todo", "commands": [], "seconds": 0.0})

    # commands: every stage runs through the `slam` CLI, and the line run is recorded as it would be typed
    def slam(self, step: str, argv: list[str], note: str = "") -> None:
        line = "slam " + shlex.join(argv)
        self._record(step, line, note)
        print(f"\n$ {line}", flush=True)
        code = self.slam_main(argv)
        if code != 0:
            raise SlamError(f"step {step}: `{line}` failed (exit code {code}); fix the cause and rerun the demo "
                            f"with the same --out to resume")

    def _record(self, step: str, line: str, note: str) -> None:
        cmds = self.step_state(step)["commands"]
        entry = {"command": line, **({"note": note} if note else {})}
        if entry not in cmds:
            cmds.append(entry)
        self.save()


def _jsonable(x):
    return json.loads(json.dumps(x))


def _plan_diff(old: dict, new: dict) -> str:
    new = _jsonable(new)
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys[:4])


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
            else None, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def check_espeak() -> None:
    """Fail before any work when the TTS engine is missing, with the command that installs it."""
    try:
        tts.load_backend("espeak")  # looked up at call time: tests stand in a missing engine
    except MissingDependencyError as e:
        raise MissingDependencyError(
            f"slam demo speaks its text with espeak-ng, which is not installed here ({e}). Install it with "
            f"`sudo apt-get install -y espeak-ng` (Debian/Ubuntu; or run scripts/bootstrap.sh), then rerun "
            f"the same command.") from None


# --- the steps --------------------------------------------------------------------------------------------
def step_corpus(d: Demo) -> None:
    pl = d.plan
    d.slam("corpus", ["corpus", "--out", str(d.p("corpus")), "--stories", str(pl.stories), "--pairs",
                      str(pl.pairs), "--prefs", str(pl.prefs), "--seed", str(pl.seed),
                      *(["--topics", str(pl.topics)] if pl.topics else [])])


def step_speech(d: Demo) -> None:
    w = str(d.workers)
    d.slam("speech", ["synth", str(d.p("corpus", "stories.txt")), "--out", str(d.p("speech", "train")),
                      "--workers", w])
    for b in BENCHMARKS:
        d.slam("speech", ["synth", str(d.p("corpus", "bench", b, "pairs.jsonl")), "--out",
                          str(d.p("speech", "bench", b)), "--workers", w])
    d.slam("speech", ["synth", str(d.p("corpus", "bench", "prompts.txt")), "--out", str(d.p("speech", "prompts")),
                      "--limit", str(d.plan.prompts), "--workers", w])


def kmeans_path(d: Demo) -> Path:
    return d.p("units", f"kmeans{d.plan.units}.npz")


def step_units(d: Demo) -> None:
    manifest = str(d.p("speech", "train", "manifest.jsonl"))
    km = kmeans_path(d)
    if not km.exists():
        # `slam fit-kmeans` featurises files until it holds --max-frames, an even share of them per file, so
        # it would decode half of the 8,000 stories; the first KMEANS_FILES stories (~2 h of speech, all 4
        # voices in turn) hold enough frames and take a tenth of the time.
        sample = d.p("speech", "train", "kmeans-sample.jsonl")  # beside the manifest: audio paths are relative
        lines = Path(manifest).read_text().splitlines(keepends=True)[: d.plan.kmeans_files]
        d._record("units", f"head -n {d.plan.kmeans_files} {shlex.quote(manifest)} > {shlex.quote(str(sample))}", "")
        sample.parent.mkdir(parents=True, exist_ok=True)
        sample.write_text("".join(lines))
        d.slam("units", ["fit-kmeans", str(sample), "--tokenizer", "mel", "--units", str(d.plan.units), "--out",
                         str(km), "--max-frames", str(d.plan.kmeans_frames), "--seed", str(d.plan.seed)])
    d.slam("units", ["tokenize", manifest, "--tokenizer", f"mel:{km}", "--out", str(d.p("units", "train")),
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


def _seconds(x: float) -> str:
    return f"{x:g}s"


def train_argv(d: Demo, name: str) -> list[str]:
    """`slam train` arguments of the three pre-training runs (text LM, speech LM from scratch, TWIST)."""
    pl = d.plan
    if name == "text":
        return ["train", "demo-text", f"data.train=[{{path: {d.p('corpus', 'stories.txt')}}}]",
                f"data.text_tokenizer={d.p('textlm', 'tokenizer')}", f"out={d.run_dir('text')}",
                f"budget.time={_seconds(pl.text_seconds)}", f"seed={pl.seed}", f"precision={pl.precision}",
                *pl.text_overrides]
    base = ["train", "demo-speech", f"data.train=[{{path: {d.p('units', 'train')}}}]", f"out={d.run_dir(name)}",
            f"budget.time={_seconds(pl.speech_seconds)}", f"seed={pl.seed}", f"precision={pl.precision}"]
    if name == "twist":
        # the body and sizes come from the text LM: model.config is only read for random init
        return base + [f"model.base={d.model_dir('text')}", *pl.speech_overrides]
    return base + list(pl.speech_overrides)


def run_done(run: Path) -> bool:
    """A `slam train`/`slam dpo` run that wrote its final model folder and its `done` event."""
    if not (run / "final" / "config.json").exists() or not (run / "metrics.jsonl").exists():
        return False
    return any('"event": "done"' in line for line in (run / "metrics.jsonl").read_text().splitlines())


class Job:
    """A chain of `slam train` runs in one background process after another, one core each."""

    def __init__(self, d: Demo, names: list[str], threads: int) -> None:
        self.d, self.names, self.threads = d, names, threads
        self.proc: subprocess.Popen | None = None
        self.current: str | None = None
        self.log = None

    def start_next(self) -> bool:
        while self.names:
            name = self.names.pop(0)
            run = self.d.run_dir(name)
            if run_done(run):
                continue
            argv = train_argv(self.d, name)
            note = ""
            if run.exists():
                argv.append("resume=true")  # an interrupted run continues from its last checkpoint
                note = "resumed an interrupted run"
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "TOKENIZERS_PARALLELISM": "false"}
            line = f"OMP_NUM_THREADS={self.threads} slam " + shlex.join(argv)
            self.d._record("pretrain", line, note)
            log_path = self.d.p("logs", f"{name}.log")
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log = open(log_path, "a")
            print(f"\n$ {line}    (log: {log_path})", flush=True)
            self.proc = subprocess.Popen([sys.executable, "-m", "slam.cli", *argv], stdout=self.log,
                                         stderr=subprocess.STDOUT, env=env)
            self.current = name
            return True
        self.current = None
        return False

    def poll(self) -> bool:
        """True while this job has work running; raises when a run failed."""
        if self.proc is None:
            return self.start_next()
        code = self.proc.poll()
        if code is None:
            return True
        self.log.close()
        name, self.proc = self.current, None
        if code != 0:
            tail = "\n".join(self.d.p("logs", f"{name}.log").read_text().splitlines()[-8:])
            raise SlamError(f"step pretrain: the {name} run failed (exit code {code}); last lines of "
                            f"{self.d.p('logs', f'{name}.log')}:\n{tail}")
        return self.start_next()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def run_progress(run: Path) -> float:
    """Budget progress (0-1) of a run, from the last metrics line that has one."""
    for row in reversed(read_metrics(run)):
        if "progress" in row:
            return float(row["progress"])
    return 0.0


def run_jobs(d: Demo, jobs: list[Job], names: list[str]) -> None:
    """Run the jobs to the end with one progress bar (budget progress of each run from its metrics)."""
    from tqdm import tqdm

    bar = tqdm(total=100.0 * len(names), desc="pretrain", bar_format="{desc}: {percentage:3.0f}%|{bar:20}| "
               "{elapsed}<{remaining} {postfix}")
    try:
        active = [j.poll() for j in jobs]
        while any(active):
            time.sleep(2.0)
            active = [j.poll() for j in jobs]
            prog = {n: (1.0 if run_done(d.run_dir(n)) else run_progress(d.run_dir(n))) for n in names}
            bar.n = 100.0 * sum(prog.values())
            bar.set_postfix_str(" | ".join(f"{n} {100 * v:.0f}%" for n, v in prog.items()), refresh=False)
            bar.refresh()
    except BaseException:
        for j in jobs:
            j.stop()
        raise
    finally:
        bar.close()


def step_pretrain(d: Demo) -> None:
    tok_dir = d.p("textlm", "tokenizer")
    if not (tok_dir / "tokenizer.json").exists():
        d.slam("pretrain", ["text-tokenizer", str(d.p("corpus", "stories.txt")), "--out", str(tok_dir)])
    # Phase 1: the text LM alone, on every core. Phase 2: the TWIST and the from-scratch speech LMs side by
    # side, one thread each, so both see the same machine for the same budget (a busy machine slows both
    # alike). Two single-threaded runs of a 4.2M-parameter model make ~2,150 tokens/s each on this CPU, one
    # two-threaded run ~3,650: side by side is both fairer and ~18% more work done.
    cores = os.cpu_count() or 2
    run_jobs(d, [Job(d, ["text"], cores)], ["text"])
    run_jobs(d, [Job(d, ["twist"], max(1, cores // 2)), Job(d, ["scratch"], max(1, cores // 2))], ["twist", "scratch"])
    names = ["text", "twist", "scratch"]
    for n in names:
        log = d.p("logs", f"{n}.log")
        last = [ln for ln in log.read_text().splitlines() if ln.startswith("slam train:")] if log.exists() else []
        if last:
            print(last[-1])


def step_dpo(d: Demo) -> None:
    if not dpo_available() or not d.p("prefs", "units", "meta.json").exists():
        d.step_state("dpo")["note"] = "skipped: `slam dpo` is not part of this version"
        return
    run = d.run_dir("twist-dpo")
    if run_done(run):
        return
    argv = ["dpo", "demo-dpo", f"model={d.model_dir('twist')}", f"data.train={d.p('prefs', 'units')}",
            f"out={run}", f"budget.time={_seconds(d.plan.dpo_seconds)}", f"seed={d.plan.seed}",
            f"precision={d.plan.precision}", *d.plan.dpo_overrides]
    note = ""
    if run.exists():
        argv.append("resume=true")
        note = "resumed an interrupted run"
    d.slam("dpo", argv, note)


def evaluated_models(d: Demo) -> list[str]:
    return [m for m in MODELS if (d.model_dir(m) / "config.json").exists()]


def step_eval(d: Demo) -> None:
    for m in evaluated_models(d):
        out = d.p("eval", f"{m}.json")
        if out.exists():
            continue
        argv = ["eval", str(d.model_dir(m))]
        for b in BENCHMARKS:
            argv += ["--bench", f"{b}={d.p('speech', 'bench', b, 'pairs.jsonl')}"]
        argv += ["--out", str(out), "--cache-dir", str(d.p("cache", "units"))]
        d.slam("eval", argv)


def prompt_files(d: Demo) -> list[Path]:
    man = d.p("speech", "prompts", "manifest.jsonl")
    rows = [json.loads(x) for x in man.read_text().splitlines() if x.strip()] if man.exists() else []
    return [d.p("speech", "prompts", r["audio"]) for r in rows[: d.plan.prompts]]


def step_generate(d: Demo) -> None:
    prompts = prompt_files(d)
    if not prompts:
        raise SlamError(f"step generate: no prompt audio in {d.p('speech', 'prompts')}")
    for m in evaluated_models(d):
        out = d.p("generate", f"{m}.wav")
        if out.with_suffix(".units.jsonl").exists():
            continue
        argv = ["generate", str(d.model_dir(m))]
        for f in prompts:
            argv += ["--prompt", str(f)]
        argv += ["--out", str(out), "--seed", str(d.plan.seed)]
        d.slam("generate", argv)


def step_report(d: Demo) -> None:
    d._record("report", f"slam report {shlex.quote(str(d.out))}", "")
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


def run_demo(out: str | Path, slam_main: Callable[[list[str]], int], minutes: float = 16.0, fresh: bool = False,
             fast: bool = False, seed: int = 0, workers: int | None = None) -> dict:
    """Run (or resume) the demo into `out`, every stage through `slam_main` (the `slam` command's entry
    point: each stage is recorded as the command line a user would type); returns its state (also in
    OUT/demo.json)."""
    if minutes <= 0:
        raise SlamError(f"--minutes must be positive, got {minutes}")
    check_espeak()
    d = Demo(Path(out), make_plan(minutes, fast, seed), workers or min(2, os.cpu_count() or 1), slam_main)
    d.load_state(fresh)
    t_all = time.perf_counter()
    for i, name in enumerate(STEPS, 1):
        st = d.step_state(name)
        if st["status"] == "done" and name != "report":
            print(f"\n[{i}/{len(STEPS)}] {TITLES[name]}: done in an earlier run ({format_duration(st['seconds'])}), "
                  f"reused")
            st["reused"] = True
            continue
        print(f"\n[{i}/{len(STEPS)}] {TITLES[name]}", flush=True)
        st.update(status="running", reused=False)
        d.save()
        t0 = time.perf_counter()
        try:
            STEP_FUNCS[name](d)
        except BaseException:
            st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - t0
            st["status"] = "interrupted"
            d.save()
            raise
        st["seconds"] = st.get("seconds", 0.0) + time.perf_counter() - t0
        st["status"] = "done"
        d.save()
        if name == "report":  # the report's own time is known only now: write it once more with it
            report.write_report(d.out)
    d.state["wall_seconds_this_run"] = round(time.perf_counter() - t_all, 1)
    d.save()
    return d.state
