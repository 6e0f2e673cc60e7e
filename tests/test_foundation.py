from dataclasses import dataclass, field

import numpy as np
import pytest

from slam.config import describe, load_config, parse_overrides
from slam.errors import ConfigError, SlamError
from slam.tokens import SlamInfo
from slam.units.dataset import UnitsWriter, dedup, existing_ids, iter_rows, read_meta
from slam.utils import parse_duration


@dataclass
class Inner:
    lr: float = 1e-3
    """Peak learning rate."""
    name: str = "adamw"
    """Optimiser name."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError("lr: must be > 0")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    steps: int = 10
    """Number of steps."""
    tags: list[str] = field(default_factory=list)


def test_config_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("inner:\n  lr: 2e-4\nsteps: 5\n")
    cfg = load_config(Outer, recipe, ["inner.name=muon", "steps=7", "tags=[a, b]"])
    assert cfg.inner.lr == 2e-4 and cfg.inner.name == "muon" and cfg.steps == 7 and cfg.tags == ["a", "b"]


@pytest.mark.parametrize("override,field_name", [
    (["inner.lrr=1"], "inner.lrr"), (["steps=abc"], "steps"), (["inner.lr=-1"], "inner.lr"),
    (["nokey"], "nokey")])
def test_config_errors_name_the_field(override, field_name):
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        load_config(Outer, None, override)


def test_config_describe_has_docs():
    rows = {k: doc for k, _, doc in describe(Outer)}
    assert rows["inner.lr"] == "Peak learning rate." and rows["steps"] == "Number of steps."


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_durations():
    assert parse_duration("24h") == 86400 and parse_duration("90m") == 5400 and parse_duration(30) == 30
    with pytest.raises(SlamError):
        parse_duration("soon")


def test_dedup_keeps_durations():
    u, d = dedup([5, 5, 5, 2, 2, 7])
    assert u.tolist() == [5, 2, 7] and d.tolist() == [3, 2, 1]
    u, d = dedup([])
    assert u.size == 0 and d.size == 0


def test_slaminfo_roundtrip(tmp_path):
    info = SlamInfo(n_units=500, tokenizer={"kind": "mel"})
    assert info.vocab_size == 502
    ids = info.units_to_ids([0, 499])
    assert ids.tolist() == [1, 2, 501, 1]
    assert info.ids_to_units(ids).tolist() == [0, 499]
    info.save(tmp_path)
    assert SlamInfo.load(tmp_path) == info
    with pytest.raises(SlamError):
        info.units_to_ids([500])


def test_units_writer_resume_and_refusal(tmp_path):
    meta = {"tokenizer_hash": "abc", "n_units": 10, "dedup": True}
    with UnitsWriter(tmp_path, meta, rows_per_shard=2) as w:
        for i in range(3):
            w.add(f"u{i}", [1, 2, i], [1, 1, 1], 0.5, f"/a/{i}.wav")
        w.reject("bad", "/a/bad.wav", "corrupt")
    assert existing_ids(tmp_path) == {"u0", "u1", "u2", "bad"}
    w2 = UnitsWriter(tmp_path, meta)
    assert "u1" in w2.skip
    rows = list(iter_rows(tmp_path))
    assert [r["id"] for r in rows] == ["u0", "u1", "u2"] and rows[2]["units"].tolist() == [1, 2, 2]
    assert read_meta(tmp_path)["n_tokens"] == 9 and read_meta(tmp_path)["n_rejected"] == 1
    with pytest.raises(SlamError, match="tokenizer_hash"):
        UnitsWriter(tmp_path, {**meta, "tokenizer_hash": "zzz"})
