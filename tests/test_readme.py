"""The README runs as written: every `slam ...` command of its stage table, in order, in one empty folder,
offline, each on what the commands before it wrote. Only size flags are appended (fewer stories, fewer
steps, smaller batches), so a command that does not run as written fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from slam.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

# Size only: the same commands on a corpus of 40 stories with a few optimiser steps each.
TINY = {
    "corpus": ["--stories", "40", "--pairs", "6", "--prefs", "6", "--topics", "2"],
    "synth": [],
    "fit-kmeans": ["--units", "24", "--max-frames", "3000"],
    "tokenize": [],
    "train tiny-cpu": ["budget.steps=2", "schedule.warmup_min_steps=1", "batch.size=4", "batch.micro=4",
                       "data.context=128", "eval.batches=1"],
    "prefs": [],
    "dpo": ["budget.steps=2", "batch.size=2", "batch.micro=1"],
    "text-tokenizer": [],
    "train demo-text": ["budget.steps=2", "schedule.warmup_min_steps=1", "batch.size=4", "batch.micro=4",
                        "data.context=64"],
    "train slam-interleaved": ["budget.steps=2", "schedule.warmup_min_steps=1", "batch.size=2", "batch.micro=2",
                               "data.context=128", "eval.batches=1"],
    "eval": [],
    "generate": ["--max-new-tokens", "20"],
}


def stage_table_commands() -> list[str]:
    text = README.read_text()
    table = text[text.index("| stage | command | module |"):]
    table = table[:table.index("\n\n")]
    rows = [line.split(" | ")[1] for line in table.splitlines()[2:]]
    return [c for row in rows for c in re.findall(r"`(slam [^`]+)`", row)]


def tiny_flags(argv: list[str]) -> list[str]:
    key = " ".join(argv[:2]) if argv[0] == "train" else argv[0]
    if key not in TINY:
        pytest.fail(f"README command `slam {' '.join(argv)}` has no entry in TINY: add its size flags (or [])")
    return TINY[key]


@pytest.mark.slow
def test_every_stage_command_runs_as_written(tmp_path, monkeypatch, capsys):
    commands = stage_table_commands()
    assert len(commands) >= 14 and commands[0].startswith("slam corpus")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        argv = shlex.split(command)[1:]
        code = main(argv + tiny_flags(argv))
        out = capsys.readouterr()
        assert code == 0, f"README command failed: {command}\n{out.err[-2000:]}"
        if argv[0] == "tokenize":  # the synth folder's manifest brings the word times interleaving needs
            assert "reading speech/manifest.jsonl" in out.out
    assert (tmp_path / "eval-results" / "slam-dpo-final.json").is_file()  # the file the table names
    assert (tmp_path / "out.wav").is_file() and (tmp_path / "runs" / "inter" / "final" / "slam.json").is_file()
    assert not list((tmp_path / "runs" / "slam-dpo" / "final").glob("*results*"))


def test_help_is_complete_sentences(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert " ".join(description.split()).endswith(".")
    from slam.cli import COMMANDS

    assert all(help_.endswith(".") and help_[0].isupper() for _, help_ in COMMANDS.values())
