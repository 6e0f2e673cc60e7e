"""The training loop end to end on a tiny model: run folder, resume == uninterrupted (also after a kill in
the middle of a checkpoint write), NaN recovery, time budget, accumulation invariance, 2 gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slam.train import checkpoint
from slam.train.config import load
from slam.train.pretrain import train
from tiny import ramp_units, train_overrides

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    """~6k tokens of learnable unit sequences (arithmetic progressions mod 16)."""
    return ramp_units(tmp_path_factory.mktemp("units") / "ds")


def tiny(units, out, *extra):
    """A 2-layer Qwen2 of ~25k parameters, context 32, 4 sequences per step."""
    return load("tiny-cpu", train_overrides(units, out, *extra))


def losses(run: Path, name: str = "loss") -> dict[int, float]:
    """Per-step train loss (or another metric); a resumed run's later lines replace earlier ones."""
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[name] for r in rows if r["kind"] == "train"}


def events(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "event"]


def test_run_folder_has_everything_and_final_is_a_model_folder(units, tmp_path):
    from slam.model_folder import load_model

    run = tmp_path / "run"
    final = train(tiny(units, run, "checkpoint.keep_last=2"))
    assert final == run / "final"
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard events"
    assert [p.name for _, p in checkpoint.step_dirs(run / "checkpoints")] == ["step-4", "step-6"]  # keep-last-2
    ck = run / "checkpoints" / "step-6"
    assert {p.name for p in ck.iterdir()} == {"model.safetensors", "optimizer.pt", "rng.pt", "state.json"}
    state = checkpoint.read_state(ck)
    assert state["step"] == 6 and state["data"]["batch"] == 12 and state["budget"]["steps"] == 6
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["flops"] > 0 for r in train_rows)
    assert train_rows[-1]["flops"] > train_rows[0]["flops"]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [3, 6]
    assert provenance_ok(run)
    model, info = load_model(final)
    assert info.n_units == 16 and model.config.vocab_size == 18
    # the final weights are the last checkpoint's
    from safetensors.torch import load_file

    ck_w = load_file(str(ck / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(model.state_dict()[key], ck_w[key])


def provenance_ok(run: Path) -> bool:
    starts = json.loads((run / "provenance.json").read_text())
    return len(starts) == 1 and starts[0]["torch"] == torch.__version__ and starts[0]["world_size"] == 1


def test_resume_after_a_kill_during_a_checkpoint_write_equals_the_uninterrupted_run(units, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    train(tiny(units, ref))
    want = losses(ref)

    class Killed(BaseException):
        pass

    real = checkpoint._save_tensors

    def dies_writing_step_4(state, path):
        real(state, path)  # the weights are on disk in the temp folder, the rest is not
        if path.parent.name.startswith(".step-4."):
            raise Killed

    run = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "_save_tensors", dies_writing_step_4)
    with pytest.raises(Killed):
        train(tiny(units, run))
    monkeypatch.setattr(checkpoint, "_save_tensors", real)
    assert [p.name for _, p in checkpoint.step_dirs(run / "checkpoints")] == ["step-2"]
    assert list((run / "checkpoints").glob(".step-4.*")), "the interrupted write left its temp folder"

    train(tiny(units, run, "resume=true"))
    assert not list((run / "checkpoints").glob(".step-4.*"))
    got = losses(run)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]  # one trajectory, rewound
    assert sorted(got) == sorted(want)
    for step in want:  # steps 3..6 were recomputed after resuming from step-2
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=0), step
    assert any(e.get("event") == "resumed" and e["checkpoint"] == "step-2" for e in events(run))
    assert len(json.loads((run / "provenance.json").read_text())) == 2


def test_non_finite_loss_restores_last_checkpoint_and_skips_the_batch(units, tmp_path):
    from slam.data import causal_lm_loss

    calls = {"n": 0}

    def poisoned(model, batch):  # micro-batch 9 = the first of step 5 (2 micro-batches per step)
        calls["n"] += 1
        s, n = causal_lm_loss(model, batch)
        return (s * float("nan"), n) if calls["n"] == 9 else (s, n)

    run = tmp_path / "run"
    train(tiny(units, run, "eval.every_steps=0"), loss_fn=poisoned)
    bad = [e for e in events(run) if e.get("event") == "non_finite"]
    assert len(bad) == 1 and bad[0]["step"] == 5 and bad[0]["restored"] == "step-4"
    got = losses(run)
    assert 5 not in got and all(np.isfinite(v) for v in got.values())
    assert sorted(got) == [1, 2, 3, 4, 6]


def test_time_budget_stops_on_time_and_excludes_eval_time(units, tmp_path):
    run = tmp_path / "run"
    # every step is followed by a validation pass: wall time is well above the budget, training time is not
    train(tiny(units, run, "budget.steps=null", "budget.time=2s", "eval.every_steps=1", "eval.batches=0",
               "checkpoint.every_steps=0", "schedule.min_lr=1e-5"))
    done = [e for e in events(run) if e.get("event") == "done"][0]
    assert 2.0 <= done["train_seconds"] < 2.6
    assert done["overhead"]["eval"] > 0.3
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert rows[-1]["progress"] == 1.0
    assert rows[-1]["lr"] < 0.05 * 3e-3  # the cosine ran to its end with the budget


def test_accumulation_invariance_one_big_micro_batch_equals_four_small(units, tmp_path):
    a = losses_of(train, tiny(units, tmp_path / "a", "batch.micro=4", "budget.steps=3"))
    b = losses_of(train, tiny(units, tmp_path / "b", "batch.micro=1", "budget.steps=3"))
    assert list(a) == [1, 2, 3]
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-5), s
    # Adam hides a wrong gradient scale from the losses; the logged pre-clip gradient norm does not
    na, nb = losses(tmp_path / "a", "grad_norm"), losses(tmp_path / "b", "grad_norm")
    for s in na:
        assert na[s] == pytest.approx(nb[s], rel=1e-4), s


def losses_of(fn, cfg) -> dict[int, float]:
    return losses(fn(cfg).parent)


@pytest.mark.parametrize("opt", ["ademamix", "muon"])
def test_alternative_optimisers_train(units, tmp_path, opt):
    got = losses_of(train, tiny(units, tmp_path / opt, f"optim.name={opt}", "budget.steps=8", "optim.lr=1e-2",
                                "schedule.name=wsd", "eval.every_steps=0", "checkpoint.every_steps=0"))
    assert got[8] < got[1]


def test_two_gloo_processes_equal_one_process_with_twice_the_accumulation(units, tmp_path):
    steps = ["budget.steps=3", "batch.micro=1", "eval.every_steps=0", "checkpoint.every_steps=0"]
    one = losses_of(train, tiny(units, tmp_path / "one", *steps))  # 1 process x accumulation 4
    two = tmp_path / "two"
    args = ["tiny-cpu", f"data.train=[{{path: {units}}}]", f"out={two}", "data.context=32",
            "data.val_fraction=0.1", "model.config.hidden_size=32", "model.config.intermediate_size=64",
            "batch.size=4", "budget.time=null", "schedule.warmup_min_steps=2", "log_every=1", "eval.batches=2",
            "checkpoint.every_minutes=0", *steps]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "slam.cli", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = losses(two)  # 2 processes x accumulation 2
    assert json.loads((two / "provenance.json").read_text())[0]["world_size"] == 2
    assert sorted(got) == [1, 2, 3]
    for s in one:
        assert got[s] == pytest.approx(one[s], rel=1e-5), s
    norm_one, norm_two = losses(tmp_path / "one", "grad_norm"), losses(two, "grad_norm")
    for s in norm_one:
        assert norm_two[s] == pytest.approx(norm_one[s], rel=1e-4), s
    assert (two / "final" / "model.safetensors").exists()


def test_text_pretraining_writes_a_text_lm_that_serves_as_a_twist_base(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from slam.model import twist_init

    words = "the cat dog sat ran on a mat log and then slept barked".split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=int(rng.integers(4, 15)))) for _ in range(300)]
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "stories.txt").write_text("\n".join(lines) + "\n")
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(tmp_path / "tok")
    run = tmp_path / "run"
    final = train(tiny(tmp_path / "text", run, "data.kind=text", f"data.text_tokenizer={tmp_path / 'tok'}",
                       "budget.steps=4", "eval.every_steps=0"))
    got = losses(run)
    assert sorted(got) == [1, 2, 3, 4] and got[4] < got[1]
    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids("cat") == vocab["cat"]
    model, info = twist_init(final, n_units=16, rope_theta=None)
    assert model.config.vocab_size == 18 and info.base_model == str(final)


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "opt", "gpt_neox"])
def test_transformer_blocks_are_found_for_every_family(model_type):
    """The unit of FSDP sharding and regional compile: the decoder layers, whatever the family calls them."""
    from slam.model import random_init
    from slam.train.dist import transformer_blocks

    sizes = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32}
    if model_type == "qwen2":  # its default 32 key/value heads cannot serve 2 query heads (refused at init)
        sizes["num_key_value_heads"] = 2
    if model_type == "opt":
        sizes = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "ffn_dim": 32,
                 "word_embed_proj_dim": 16}
    model, _ = random_init({"model_type": model_type, **sizes}, n_units=8, rope_theta=None)
    blocks = transformer_blocks(model)
    assert len(blocks) == 3
    assert all("Layer" in type(b).__name__ for b in blocks)


def test_a_refused_run_writes_nothing_into_the_folder_it_refused(units, tmp_path, capsys):
    from slam.cli import main

    run = tmp_path / "done"
    train(tiny(units, run, "budget.steps=2", "eval.every_steps=0", "checkpoint.every_steps=0"))
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    capsys.readouterr()
    assert main(["train", "tiny-cpu", *train_overrides(units, run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a run" in err[-1]
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # metrics, events, lock untouched


def test_a_second_writer_is_refused_with_the_holders_pid(units, tmp_path, capsys):
    from slam.cli import main
    from slam.lock import lock_output

    run = tmp_path / "busy"
    with lock_output(run, "train"):  # as another `slam train` on the same folder would hold it
        assert main(["train", "tiny-cpu", *train_overrides(units, run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(os.getpid()) in err[0], err
    assert not (run / "metrics.jsonl").exists()
    assert main(["train", "tiny-cpu", *train_overrides(units, run, "budget.steps=2")]) == 0  # lock released


def test_a_kill_while_writing_final_resumes_cleanly(units, tmp_path, monkeypatch):
    """Killed in the middle of final/: the rerun removes the half-written temp folder, writes final/, and the
    last step's validation appears once in metrics.jsonl."""
    import slam.train.pretrain as pretrain

    class Killed(BaseException):
        pass

    def dies_writing(model, info, folder, **kw):
        tmp = folder.parent / f".{folder.name}.x1y2.tmp"  # what atomic_dir had made when the kill landed
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"\0" * 10)
        raise Killed

    run = tmp_path / "run"
    monkeypatch.setattr(pretrain, "save_model", dies_writing)
    with pytest.raises(Killed):
        train(tiny(units, run, "checkpoint.keep_last=2"))
    monkeypatch.undo()
    assert list(run.glob(".final.*.tmp"))
    train(tiny(units, run, "resume=true", "checkpoint.keep_last=2"))
    assert not list(run.glob(".final.*.tmp")) and (run / "final" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "val"] == [3, 6]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
