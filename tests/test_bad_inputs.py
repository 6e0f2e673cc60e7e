"""Every user error through the CLI: exit code 2, exactly one line on stderr naming the file or field, no
traceback, and nothing of the user's lost. Each case is what a new (or hostile) user would type."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slam.cli import main
from tiny import ramp_prefs, ramp_units, slam_model_folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model folder with its mel tokenizer, a k-means file, two wavs, a units dataset, text files."""
    from conftest import synth_speechlike

    root = tmp_path_factory.mktemp("world")
    model = slam_model_folder(root)
    (root / "audio").mkdir()
    for i in range(2):
        sf.write(root / "audio" / f"a{i}.wav", synth_speechlike(1.0, seed=i), 16000)
    ramp_units(root / "units")
    ramp_prefs(root / "prefs", model)  # units made by the model's own tokenizer
    (root / "text.txt").write_text("Ben met Zoe at the park.\n")
    (root / "bench.jsonl").write_text('{"id": "p0", "positive": "audio/a0.wav", "negative": "audio/a1.wav"}\n')
    (root / "latin1.txt").write_bytes("Zoë met Ben.\n".encode("latin-1"))
    (root / "afile").write_text("I am a file, not a folder.\n")
    (root / "empty").mkdir()
    (root / "bad.yaml").write_text("out: [unclosed\n")
    (root / "bad.jsonl").write_text('{"text": "fine"}\n{not json\n')
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    # a k-means "pickle" that names a numpy submodule whose import would run code
    (root / "evil.bin").write_bytes(b"cnumpy.f2py.__main__\nndarray\n.")
    broken = root / "broken-model"
    shutil.copytree(model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    badjson = root / "badjson-model"
    shutil.copytree(model, badjson)
    (badjson / "slam.json").write_text("{not json")
    pickled = root / "pickle-model"
    shutil.copytree(model, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    return root


# (name, argv with {R} for the world folder, words the one line must contain)
CASES = [
    ("corpus-out-is-a-file", ["corpus", "--out", "{R}/afile", "--stories", "2"], ["afile"]),
    ("corpus-negative-stories", ["corpus", "--out", "{R}/c", "--stories", "-5"], ["stories"]),
    ("synth-missing-text", ["synth", "{R}/missing.txt", "--out", "{R}/s1"], ["missing.txt"]),
    ("synth-not-utf8", ["synth", "{R}/latin1.txt", "--out", "{R}/s2"], ["latin1.txt"]),
    ("synth-out-is-a-file", ["synth", "{R}/text.txt", "--out", "{R}/afile"], ["afile"]),
    ("synth-backend-os-system", ["synth", "{R}/text.txt", "--out", "{R}/s3", "--backend", "os:system"],
     ["backend"]),
    ("synth-zero-workers", ["synth", "{R}/text.txt", "--out", "{R}/s4", "--workers", "0"], ["workers"]),
    ("synth-negative-limit", ["synth", "{R}/text.txt", "--out", "{R}/s5", "--limit", "-1"], ["limit"]),
    ("synth-bad-jsonl", ["synth", "{R}/bad.jsonl", "--out", "{R}/s6"], ["bad.jsonl"]),
    ("fit-missing-audio", ["fit-kmeans", "{R}/nowhere", "--tokenizer", "mel", "--units", "4", "--out",
                           "{R}/k1.npz"], ["nowhere"]),
    ("fit-one-unit", ["fit-kmeans", "{R}/audio", "--tokenizer", "mel", "--units", "1", "--out", "{R}/k2.npz"],
     ["units"]),
    ("fit-not-npz", ["fit-kmeans", "{R}/audio", "--tokenizer", "mel", "--units", "4", "--out", "{R}/k.txt"],
     ["npz"]),
    ("tokenize-no-audio", ["tokenize", "{R}/empty", "--tokenizer", "mel:{R}/km.npz", "--out", "{R}/u1"],
     ["empty"]),
    ("tokenize-missing-kmeans", ["tokenize", "{R}/audio", "--tokenizer", "mel:{R}/nokm.npz", "--out", "{R}/u2"],
     ["nokm.npz"]),
    ("tokenize-unknown-kind", ["tokenize", "{R}/audio", "--tokenizer", "bogus:x", "--out", "{R}/u3"],
     ["bogus"]),
    ("tokenize-out-is-a-file", ["tokenize", "{R}/audio", "--tokenizer", "mel:{R}/km.npz", "--out", "{R}/afile"],
     ["afile"]),
    ("tokenize-bad-shard", ["tokenize", "{R}/audio", "--tokenizer", "mel:{R}/km.npz", "--out", "{R}/u4",
                            "--shard", "3/2"], ["shard"]),
    ("tokenize-evil-kmeans", ["tokenize", "{R}/audio", "--tokenizer", "mel:{R}/evil.bin", "--out", "{R}/u5"],
     ["evil.bin"]),
    ("train-unknown-recipe", ["train", "nosuch-recipe"], ["nosuch-recipe"]),
    ("train-bad-yaml", ["train", "{R}/bad.yaml"], ["bad.yaml"]),
    ("train-missing-data", ["train", "tiny-cpu", "data.train=[{path: {R}/nodata}]", "out={R}/t1"], ["nodata"]),
    ("train-unknown-key", ["train", "tiny-cpu", "optim.nosuch=1"], ["optim.nosuch"]),
    ("train-negative-lr", ["train", "tiny-cpu", "optim.lr=-1"], ["optim.lr"]),
    ("train-bad-budget", ["train", "tiny-cpu", "budget.time=abc"], ["budget.time"]),
    ("train-micro-does-not-divide", ["train", "tiny-cpu", "batch.micro=3"], ["batch.micro"]),
    ("train-hidden-size-30", ["train", "tiny-cpu", "data.train=[{path: {R}/units}]", "out={R}/t2",
                              "model.config.hidden_size=30"], ["model.config"]),
    ("train-model-type-nosuch", ["train", "tiny-cpu", "data.train=[{path: {R}/units}]", "out={R}/t3",
                                 "model.config.model_type=nosuch"], ["model.config"]),
    ("train-unknown-model-field", ["train", "tiny-cpu", "data.train=[{path: {R}/units}]", "out={R}/t4",
                                   "model.config.nosuch_size=3"], ["nosuch_size"]),
    ("train-out-is-a-file", ["train", "tiny-cpu", "data.train=[{path: {R}/units}]", "out={R}/afile"], ["afile"]),
    ("dpo-missing-model", ["dpo", "slam-dpo", "model={R}/nomodel", "out={R}/d1"], ["nomodel"]),
    ("dpo-missing-data", ["dpo", "slam-dpo", "model={R}/model", "data.train={R}/noprefs", "out={R}/d2"],
     ["noprefs"]),
    ("prefs-missing-text", ["prefs", "{R}/noprefs.jsonl", "--model", "{R}/model", "--out", "{R}/p1"],
     ["noprefs.jsonl"]),
    ("eval-missing-model", ["eval", "{R}/nomodel", "--bench", "x={R}/bench.jsonl"], ["nomodel"]),
    ("eval-nothing-to-do", ["eval", "{R}/model"], ["bench"]),
    ("eval-missing-bench", ["eval", "{R}/model", "--bench", "ssc={R}/nobench"], ["nobench"]),
    ("eval-corrupt-weights", ["eval", "{R}/broken-model", "--bench", "x={R}/bench.jsonl"], ["model.safetensors"]),
    ("eval-invalid-slam-json", ["eval", "{R}/badjson-model", "--bench", "x={R}/bench.jsonl"], ["slam.json"]),
    ("eval-pickle-only-model", ["eval", "{R}/pickle-model", "--bench", "x={R}/bench.jsonl"], ["pytorch_model.bin"]),
    ("generate-no-prompt", ["generate", "{R}/model", "--out", "{R}/g1.wav"], ["prompt"]),
    ("generate-missing-prompt", ["generate", "{R}/model", "--prompt", "{R}/nowav.wav", "--out", "{R}/g2.wav"],
     ["nowav.wav"]),
    ("generate-corrupt-prompt", ["generate", "{R}/model", "--prompt", "{R}/corrupt.wav", "--out", "{R}/g3.wav"],
     ["corrupt.wav"]),
    ("generate-missing-units-row", ["generate", "{R}/model", "--prompt-units", "{R}/prefs:nosuch-id",
                                    "--num-samples", "2", "--out", "{R}/g4.wav"], ["nosuch-id"]),
    ("generate-missing-units-folder", ["generate", "{R}/model", "--prompt-units", "{R}/nounits:a/x",
                                       "--num-samples", "2", "--out", "{R}/g5.wav"], ["nounits"]),
    ("convert-missing-source", ["convert", "{R}/nomodel", "--out", "{R}/c1"], ["nomodel"]),
    ("convert-not-slamkit", ["convert", "{R}/model", "--out", "{R}/c2"], ["slamkit"]),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_and_exit_2(world, capsys, name, argv, words):
    argv = [a.replace("{R}", str(world)) for a in argv]
    before = sorted(p.relative_to(world).as_posix() for p in world.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors exit 2 with a usage line and the error
        code = e.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and err[-1].startswith(f"slam {argv[0]}: error:"), err
        return
    except BaseException as e:  # a traceback: the case fails, naming the exception
        pytest.fail(f"{name}: {type(e).__name__}: {e}")
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert code == 2, (name, code, err)
    assert len(err) == 1 and err[0].startswith(f"slam {argv[0]}: error:"), err
    assert "Traceback" not in err[0]
    for w in words:
        assert w.replace("{R}", str(world)) in err[0], (w, err[0])
    # nothing of the user's was removed
    after = sorted(p.relative_to(world).as_posix() for p in world.rglob("*"))
    assert set(before) <= set(after), sorted(set(before) - set(after))


def test_a_full_disk_is_one_line_exit_1_and_not_a_bad_input(world, capsys, monkeypatch):
    """An environment failure stops the command with one line and exit code 1 (not 2: the input is fine)."""
    import errno

    import slam.cli.corpus as corpus_cli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(world / "c9" / "stories.txt"))

    monkeypatch.setattr(corpus_cli.corpus, "write", full)
    assert main(["corpus", "--out", str(world / "c9"), "--stories", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "stories.txt" in err[0] and "rerun" in err[0]


def test_a_slamkit_folder_with_only_a_pickle_converts_weights_only(tmp_path):
    """`slam convert` reads pytorch_model.bin with torch.load(weights_only=True) and writes safetensors; any
    other command refuses the pickle."""
    import json

    import torch

    from slam.model import random_init

    from slam.model_folder import load_model
    from tiny import TINY_QWEN2

    base = {**TINY_QWEN2, "vocab_size": 18, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}
    model, _ = random_init(dict(TINY_QWEN2), 16, seed=3)
    src = tmp_path / "slamkit"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "speech_language_model", "vocab_size": 18,
                                                  "base_model_name": "Qwen/Qwen2.5-0.5B", "base_config": base}))
    torch.save({f"lm.{k}": v for k, v in model.state_dict().items()}, src / "pytorch_model.bin")
    with pytest.raises(Exception, match="pytorch_model.bin"):
        load_model(src)
    mine = tmp_path / "mine"  # a folder of the user's: never replaced
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["convert", str(src), "--out", str(mine)]) == 2
    assert (mine / "thesis.tex").read_text() == "years of work" and len(list(mine.iterdir())) == 1
    assert main(["convert", str(src), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "pytorch_model.bin").exists()
    converted, _ = load_model(tmp_path / "out")
    for k, v in model.state_dict().items():
        assert torch.equal(converted.state_dict()[k], v), k


@pytest.mark.parametrize("command", ["synth", "tokenize", "eval", "generate"])
def test_a_second_writer_is_refused_naming_the_first(world, tmp_path, capsys, command):
    """Two processes writing the same output would mix their work: the second is refused, naming the pid."""
    import os

    from slam.lock import lock_beside, lock_output

    out = tmp_path / "out"
    argv, held = {
        "synth": (["synth", str(world / "text.txt"), "--out", str(out)], lambda: lock_output(out, "synth")),
        "tokenize": (["tokenize", str(world / "audio"), "--tokenizer", f"mel:{world / 'km.npz'}", "--out", str(out)],
                     lambda: lock_beside(out / ".shard-000of001", "tokenize --shard 0/1")),
        "eval": (["eval", str(world / "model"), "--bench", f"x={world / 'bench.jsonl'}", "--out",
                  str(out / "r.json")], lambda: lock_beside(out / "r.json", "eval")),
        "generate": (["generate", str(world / "model"), "--prompt", str(world / "audio" / "a0.wav"), "--out",
                      str(out / "g.wav")], lambda: lock_beside(out / "g.wav", "generate")),
    }[command]
    with held():
        assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert str(os.getpid()) in err[-1] and err[-1].startswith(f"slam {command}: error:"), err
    assert main(argv) == 0  # the holder is gone: the same command runs


def test_generate_keeps_prompts_with_the_same_name_apart(world, tmp_path, capsys):
    """a/x.wav and b/x.wav are two prompts: two outputs, neither overwrites the other."""
    import json

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(world / "audio" / ("a0.wav" if d == "a" else "a1.wav"), tmp_path / d / "x.wav")
    out = tmp_path / "gen" / "o.wav"
    assert main(["generate", str(world / "model"), "--prompt", str(tmp_path / "a" / "x.wav"), "--prompt",
                 str(tmp_path / "b" / "x.wav"), "--max-new-tokens", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.with_suffix(".units.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["a-x", "b-x"]
    assert len({r["file"] for r in rows}) == 2 and all((out.parent / r["file"]).is_file() for r in rows)


def test_a_prompt_too_short_for_one_unit_is_refused(world, tmp_path, capsys):
    sf.write(tmp_path / "tiny.wav", np.zeros(100, np.float32) + 0.01, 16000)
    assert main(["generate", str(world / "model"), "--prompt", str(tmp_path / "tiny.wav"), "--out",
                 str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny.wav" in err[0] and "100 samples" in err[0]
