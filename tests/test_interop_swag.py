"""The paper's DPO data from SWAG, through `slam prefs SWAG --model M --out D`: the published SWAG csv layout
(rowanz/swagaf data/train.csv) -> prompt = first sentence, chosen = sent2 + gold ending, rejected = sent2 + a
wrong ending -> auto-BLEU filter -> espeak-ng in several voices -> units of the model's tokenizer -> `slam dpo`.
A hub id offline is one line."""

from __future__ import annotations

import csv
import json

from slam.cli import main
from slam.prefs import swag_triples
from slam.units.dataset import load_table
from tiny import slam_model_folder

HEADER = ["", "video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source", "ending0", "ending1",
          "ending2", "ending3", "label"]
ROWS = [
    ["0", "anetv_1", "3416", "Members of the group dance. They", "Members of the group dance.", "They",
     "gold0", "clap their hands.", "eat a sandwich.", "fly away.", "sink.", "0"],
    ["1", "anetv_2", "3417", "A man lifts a box. He", "A man lifts a box.", "He", "gold1", "sings loudly.",
     "puts it on the shelf.", "melts.", "turns blue.", "1"],
    ["2", "lsmdc_3", "18", "the dog the dog the dog. the dog", "the dog the dog the dog.", "the dog", "gold0",
     "the dog the dog.", "runs.", "sleeps.", "barks.", "0"],
    ["3", "lsmdc_4", "19", "Someone opens the door. She", "Someone opens the door.", "She", "gold2",
     "eats the door.", "falls up.", "walks inside.", "becomes a tree.", "2"],
]


def write_swag(path, rows=ROWS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def test_swag_triples_follow_spokenswag(tmp_path):
    rows = swag_triples(write_swag(tmp_path / "train.csv"))
    assert [r["id"] for r in rows] == ["swag-0", "swag-1", "swag-2", "swag-3"]
    assert rows[1]["prompt"] == "A man lifts a box." and rows[1]["chosen"] == "He puts it on the shelf."
    assert rows[1]["rejected"] in {"He sings loudly.", "He melts.", "He turns blue."}
    assert rows[3]["chosen"] == "She walks inside." and rows[3]["rejected"] != rows[3]["chosen"]
    assert swag_triples(tmp_path / "train.csv") == rows  # the wrong ending is a function of the row id
    assert len(swag_triples(tmp_path / "train.csv", limit=2)) == 2


def test_slam_prefs_builds_dpo_data_from_swag(tmp_path, capsys):
    start = slam_model_folder(tmp_path / "m", 16)
    swag = write_swag(tmp_path / "train.csv")
    out = tmp_path / "prefs"
    assert main(["prefs", str(swag), "--model", str(start), "--out", str(out), "--workers", "1",
                 "--voices", "en-us", "en-us+f3"]) == 0
    assert "1 dropped by the auto-BLEU filter" in capsys.readouterr().out  # the dog the dog ...
    build = json.loads((out / "build.json").read_text())
    assert build["pairs"] == 3 and build["dropped_auto_bleu"] == 1
    kept = [json.loads(x) for x in (out / "text" / "prefs.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["swag-0", "swag-1", "swag-3"]
    voices = {json.loads(x)["voice"] for x in (out / "audio" / "manifest.jsonl").read_text().splitlines()}
    assert voices == {"en-us", "en-us+f3"}  # several voices, one per row in turn
    ids = {r["id"] for r in load_table(out / "units", ["id"]).to_pylist()}
    assert ids == {f"swag-{i}-{f}" for i in (0, 1, 3) for f in ("prompt", "chosen", "rejected")}
    run = tmp_path / "dpo"
    assert main(["dpo", "slam-dpo", f"model={start}", f"data.train={out / 'units'}", f"out={run}",
                 "data.val_fraction=0", "batch.size=2", "batch.micro=1", "budget.steps=2", "eval.every_steps=0",
                 "checkpoint.every_steps=0", "checkpoint.every_minutes=0", "precision=fp32"]) == 0


def test_swag_errors_are_one_line(tmp_path, capsys, monkeypatch):
    start = slam_model_folder(tmp_path / "m", 16)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for src, said in (("hf:allenai/swag@train", "needs the network"),
                      (str(write_swag(tmp_path / "test.csv", [r[:-1] + [""] for r in ROWS])), "no gold label")):
        assert main(["prefs", src, "--model", str(start), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1, err
