"""Packing, boundaries, the token-weighted packed loss, the resumable loader, and the document sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slam.attention import ATTN_NAME, packing_leaks, prepare_packed_attention, use_varlen_attention
from slam.data import (IGNORE, ArraySource, PackedLoader, causal_lm_loss, evaluate_loss, in_val_split,
                       pack_documents, plan_epoch, text_source, to_batch, units_source)
from slam.errors import SlamError
from slam.model import random_init
from slam.tokens import SlamInfo

K = 20
INFO = SlamInfo(n_units=K)
TINY = {
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                max_position_embeddings=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}


def docs_of(lengths, seed=0):
    """Documents `<s> units <s>` with `lengths` units each (ids via the published layout)."""
    rng = np.random.default_rng(seed)
    return [INFO.units_to_ids(rng.integers(0, K, n)) for n in lengths]


def separate_loss(model, docs):
    """Reference: every document alone, unpacked, summed NLL and count of predicted tokens."""
    total, count = 0.0, 0
    with torch.no_grad():
        for d in docs:
            x = torch.as_tensor(d)[None]
            logits = model(input_ids=x, use_cache=False).logits[0]
            total += F.cross_entropy(logits[:-1].double(), x[0, 1:], reduction="sum").item()
            count += len(d) - 1
    return total, count


# --- packing -------------------------------------------------------------------------------------------------
def test_packing_layout_positions_labels():
    docs = docs_of([3, 7, 1, 12])  # 5 + 9 + 3 + 14 = 31 tokens, rows of 8
    b = pack_documents(docs, seq_len=8)
    ids, pos, lab = b["input_ids"].numpy(), b["position_ids"].numpy(), b["labels"].numpy()
    assert ids.shape == (4, 8)
    stream = np.concatenate(docs)
    assert np.array_equal(ids.reshape(-1)[:31], stream)  # dense: every token once, in order, no padding
    assert (ids.reshape(-1)[31:] == INFO.pad_id).all() and (lab.reshape(-1)[31:] == IGNORE).all()
    # positions restart at every document and at every row (a split document continues at 0)
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert pos[1].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    # labels: inputs, except each chunk's first token (never predicted across a boundary)
    assert np.array_equal(lab == IGNORE, (pos == 0) | (np.arange(32).reshape(4, 8) >= 31))
    keep = lab != IGNORE
    assert np.array_equal(lab[keep], ids[keep])
    # predicted tokens: (len - 1) per chunk
    chunks = np.diff(b["cu_seq_lens_q"].numpy())
    assert b["n_tokens"] == int((chunks - 1).sum()) - 0 == int(keep[:, 1:].sum())


def test_cu_seqlens_are_exactly_the_document_boundaries():
    lengths = [3, 5, 2, 4, 6, 1]  # + 2 specials each: 5, 7, 4, 6, 8, 3 = 33 tokens
    docs = docs_of(lengths)
    sizes = [n + 2 for n in lengths]
    b = pack_documents(docs, seq_len=11)
    # independent: document starts on the stream plus every row start (33 tokens fill 3 rows exactly)
    starts = set(np.cumsum([0] + sizes[:-1]).tolist()) | {0, 11, 22}
    assert b["cu_seq_lens_q"].tolist() == sorted(starts) + [33]
    assert b["cu_seq_lens_q"].dtype == torch.int32
    assert b["max_length_q"] == 11  # the row length: an upper bound that never changes between batches


@pytest.mark.parametrize("model_type", list(TINY))
def test_packed_loss_equals_documents_run_separately(model_type):
    torch.manual_seed(0)
    model, _ = random_init(model_type, K, overrides=TINY[model_type], seed=1)
    model.eval()
    # 3 rows of 16 filled exactly by whole documents (6+10 | 12+4 | 5+8+3), then one 20-token document
    # that the packer chunks at the row boundary (16 + 4, the 5th row padded): reference = the pieces alone
    docs = docs_of([4, 8, 10, 2, 3, 6, 1, 18])
    assert [len(d) for d in docs] == [6, 10, 12, 4, 5, 8, 3, 20]
    batch = pack_documents(docs, seq_len=16)
    assert batch["input_ids"].shape == (5, 16)
    pieces = docs[:7] + [docs[7][:16], docs[7][16:]]
    ref_sum, ref_n = separate_loss(model, pieces)
    paths = ["sdpa", ATTN_NAME] if model_type != "opt" else [ATTN_NAME]
    for path in paths:
        if path == ATTN_NAME:
            use_varlen_attention(model)
        with torch.no_grad():
            loss_sum, n = causal_lm_loss(model, batch)
        assert int(n) == ref_n == batch["n_tokens"]
        assert float(loss_sum) == pytest.approx(ref_sum, rel=1e-5), path


def test_bucketed_cu_seqlens_give_the_same_loss():
    """cu_bucket pads the boundaries with empty documents (static shapes for torch.compile)."""
    model, _ = random_init("llama", K, overrides=TINY["llama"], seed=3)
    model.eval()
    use_varlen_attention(model)
    src = ArraySource(docs_of(np.arange(20) % 7 + 1, seed=9))
    plain = PackedLoader([src], seq_len=16, batch_size=3, seed=0).next_batch()
    bucketed = PackedLoader([src], seq_len=16, batch_size=3, seed=0, cu_bucket=8).next_batch()
    cu, cub = plain["cu_seq_lens_q"].tolist(), bucketed["cu_seq_lens_q"].tolist()
    assert (len(cub) - 1) % 8 == 0 and len(cub) > len(cu)
    assert cub[:len(cu)] == cu and set(cub[len(cu):]) == {48}
    with torch.no_grad():
        a, n_a = causal_lm_loss(model, plain)
        b, n_b = causal_lm_loss(model, bucketed)
    assert int(n_a) == int(n_b) and float(a) == pytest.approx(float(b), rel=1e-6)


def test_leaks_are_detected():
    """The probe and the loss see the failure modes of transformers' packed attention (docs/model-and-packing.md),
    so the tests above can fail."""
    model, _ = random_init("qwen2", K, overrides=TINY["qwen2"], seed=1)
    model.eval()
    docs = docs_of([5, 6, 4, 9])
    batch = pack_documents(docs, seq_len=16)
    with torch.no_grad():
        ok, _ = causal_lm_loss(model, batch)
    with torch.no_grad():  # a cache (use_cache defaults to True in Qwen2) silently merges documents
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    leaky = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    assert abs(float(leaky) - float(ok)) > 1e-3
    assert not packing_leaks(model)
    opt, _ = random_init("opt", K, overrides=TINY["opt"], seed=1)
    assert packing_leaks(opt)  # OPT's SDPA path ignores position_ids when building its mask
    assert prepare_packed_attention(opt) == ATTN_NAME and not packing_leaks(opt)
    assert prepare_packed_attention(model) == "sdpa"
    # the loss guards itself: its first call on a leaking model switches it to varlen (with a warning)
    opt2, _ = random_init("opt", K, overrides=TINY["opt"], seed=1)
    with pytest.warns(UserWarning, match="attend to each other"):
        causal_lm_loss(opt2, batch)
    assert opt2.config._attn_implementation == ATTN_NAME


def test_gradient_accumulation_equals_big_batch():
    model, _ = random_init("qwen2", K, overrides=TINY["qwen2"], seed=2)
    loader = PackedLoader([ArraySource(docs_of(np.arange(3, 40) % 17 + 1))], seq_len=24, batch_size=4, seed=0)
    big = loader.make_batch(0, 0)
    halves = [to_batch(*(big[k][i:i + 2].numpy() for k in ("input_ids", "position_ids", "labels")))
              for i in (0, 2)]

    def grads(batches):
        model.zero_grad()
        sums = [causal_lm_loss(model, b) for b in batches]
        total_n = sum(int(n) for _, n in sums)
        for s, _ in sums:
            (s / total_n).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    torch.testing.assert_close(grads(halves), grads([big]), rtol=1e-5, atol=1e-7)


# --- loader --------------------------------------------------------------------------------------------------
def _rows(batch):
    return batch["input_ids"].numpy().tolist()


def test_loader_epoch_covers_every_document_once_and_is_seeded():
    docs = docs_of(np.arange(40) % 13 + 1, seed=3)
    src = ArraySource(docs)
    a = PackedLoader([src], seq_len=32, batch_size=2, seed=7, infinite=False)
    batches = list(a)
    assert len(batches) == a.batches_per_epoch
    stream = np.concatenate([b["input_ids"].numpy().reshape(-1) for b in batches])[:a.tokens_per_epoch]
    plan = a.plan(0)
    assert np.array_equal(stream, np.concatenate([docs[i] for i in plan.index]))
    assert sorted(plan.index.tolist()) == list(range(40))
    again = PackedLoader([src], seq_len=32, batch_size=2, seed=7, infinite=False)
    assert [_rows(b) for b in again] == [_rows(b) for b in batches]
    other = PackedLoader([src], seq_len=32, batch_size=2, seed=8, infinite=False)
    assert [_rows(b) for b in other] != [_rows(b) for b in batches]
    assert not np.array_equal(plan_epoch([src.lengths()], None, 7, 1).index, plan.index)  # new order per epoch


def test_loader_resume_gives_identical_batches_across_epochs():
    src = ArraySource(docs_of(np.arange(30) % 11 + 1, seed=4))
    ref = PackedLoader([src], seq_len=16, batch_size=3, seed=1)
    n = ref.batches_per_epoch
    seq = [ref.next_batch() for _ in range(2 * n + 3)]
    cut = PackedLoader([src], seq_len=16, batch_size=3, seed=1)
    for _ in range(n + 1):
        cut.next_batch()
    state = cut.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 1
    resumed = PackedLoader([src], seq_len=16, batch_size=3, seed=1)
    resumed.load_state_dict(dict(state))
    for expected in seq[n + 1:]:
        got = resumed.next_batch()
        assert all(torch.equal(got[k], expected[k]) for k in ("input_ids", "labels", "position_ids"))
    with pytest.raises(SlamError, match="seq_len"):
        PackedLoader([src], seq_len=32, batch_size=3, seed=1).load_state_dict(state)
    smaller = ArraySource(docs_of(np.arange(29) % 11 + 1, seed=4))
    with pytest.raises(SlamError, match="data changed"):
        PackedLoader([smaller], seq_len=16, batch_size=3, seed=1).load_state_dict(state)
    with pytest.raises(SlamError, match="data changed"):
        PackedLoader([src, smaller], seq_len=16, batch_size=3, seed=1, weights=[1, 1]).load_state_dict(state)
    import json
    assert json.loads(json.dumps(state)) == state  # plain JSON, fits any checkpoint format


def test_ranks_split_each_global_batch():
    src = ArraySource(docs_of(np.arange(50) % 9 + 1, seed=5))
    one = PackedLoader([src], seq_len=16, batch_size=4, seed=2)
    two = [PackedLoader([src], seq_len=16, batch_size=2, seed=2, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        full = _rows(one.next_batch())
        assert _rows(two[0].next_batch()) + _rows(two[1].next_batch()) == full
    assert two[0].state_dict() == two[1].state_dict()


def test_mixing_weights_are_token_shares():
    small = ArraySource(docs_of([10] * 20, seed=6), name="small")  # 240 tokens
    large = ArraySource(docs_of([10] * 200, seed=7), name="large")  # 2400 tokens
    plan = plan_epoch([small.lengths(), large.lengths()], [0.5, 0.5], seed=0, epoch=0)
    toks = np.bincount(plan.source, weights=np.diff(plan.start))
    assert toks[0] / toks.sum() == pytest.approx(0.5, abs=0.01)  # small is upsampled ~5.5x
    first_half = plan.source[: len(plan.source) // 2]
    assert 0.4 < first_half.mean() < 0.6  # interleaved evenly, not one source after the other
    natural = plan_epoch([small.lengths(), large.lengths()], None, seed=0, epoch=0)
    assert np.bincount(natural.source).tolist() == [20, 200]
    with pytest.raises(SlamError):
        plan_epoch([small.lengths()], [1.0, 2.0], seed=0, epoch=0)


# --- sources -------------------------------------------------------------------------------------------------
def _units_dataset(folder, n=60, k=K, tokenizer_hash="tokA"):
    from slam.units.dataset import UnitsWriter

    rng = np.random.default_rng(0)
    with UnitsWriter(folder, {"n_units": k, "tokenizer_hash": tokenizer_hash, "dedup": True}) as w:
        for i in range(n):
            u = rng.integers(0, k, rng.integers(1, 30))
            w.add(f"utt{i:03d}", u, np.ones_like(u), len(u) / 25, "test")
        w.add("empty", np.zeros(0, int), np.zeros(0, int), 0.0, "test")
    return folder


def test_units_source_split_and_ids(tmp_path):
    from slam.units.dataset import iter_rows

    folder = _units_dataset(tmp_path / "u")
    info = SlamInfo(n_units=K, tokenizer_hash="tokA")
    allsrc = units_source(folder, info)
    rows = [r for r in iter_rows(folder) if len(r["units"])]
    assert len(allsrc) == 60  # the empty utterance is dropped
    for i in (0, 17, 59):
        assert np.array_equal(allsrc.doc(i), info.units_to_ids(rows[i]["units"]))
    assert allsrc.lengths().tolist() == [len(r["units"]) + 2 for r in rows]
    train = units_source(folder, info, split="train", val_fraction=0.25)
    val = units_source(folder, info, split="val", val_fraction=0.25)
    assert len(train) + len(val) == 60 and 5 <= len(val) <= 25
    val_ids = {r["id"] for r in rows if in_val_split(r["id"], 0.25)}
    assert [d.tolist() for d in val] == [info.units_to_ids(r["units"]).tolist() for r in rows if r["id"] in val_ids]
    two = units_source([folder, folder], info)
    assert len(two) == 120
    with pytest.raises(SlamError, match="tokenizer"):
        units_source(folder, SlamInfo(n_units=K, tokenizer_hash="tokB"))
    with pytest.raises(SlamError, match="n_units"):
        units_source(folder, SlamInfo(n_units=K - 5))


def test_text_source_and_validation_loss(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "[UNK]", "the", "cat", "sat", "on", "mat", "a", "dog", "ran"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="[UNK]")
    fast.save_pretrained(tmp_path / "tok")
    lines = [" ".join(np.random.default_rng(i).choice(words[4:], 6)) for i in range(40)]
    (tmp_path / "a.txt").write_text("\n".join(lines[:20]) + "\n\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[20:]))
    src = text_source([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "tok")
    assert len(src) == 40
    assert src.doc(0).tolist() == [1] + [words.index(w) for w in lines[0].split()] + [2]
    val = text_source([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "tok", split="val", val_fraction=0.3)
    train = text_source([tmp_path / "a.txt", tmp_path / "b.txt"], tmp_path / "tok", split="train",
                        val_fraction=0.3)
    assert len(val) + len(train) == 40 and len(val) > 0
    model, _ = random_init("llama", 0, overrides=TINY["llama"] | {"vocab_size": len(words)},
                           info=SlamInfo(n_units=0, vocab_size=len(words), pad_id=0, bos_id=1, eos_id=2))
    ref, ref_n = separate_loss(model, [val.doc(i) for i in range(len(val))])
    # one row long enough for every held-out document: packed with per-document positions, the loss is
    # exactly the documents' own (each alone, unpacked), token for token
    total = int(val.lengths().sum())
    loss, n = evaluate_loss(model, PackedLoader([val], seq_len=total + 8, batch_size=1, shuffle=False,
                                                infinite=False))
    assert n == ref_n and loss == pytest.approx(ref / ref_n, rel=1e-5)
    # rows of 12 cut the 8-token documents at row boundaries: a chunk's first token is not predicted
    _, n12 = evaluate_loss(model, PackedLoader([val], 12, 2, shuffle=False, infinite=False))
    assert n12 == sum(b["n_tokens"] for b in PackedLoader([val], 12, 2, shuffle=False, infinite=False)) < ref_n
    with pytest.raises(SlamError):
        text_source(tmp_path / "missing.txt", tmp_path / "tok")


def test_model_folder_carries_the_datasets_tokenizer(tmp_path, speechlike):
    """units dataset (mel tokenizer embedded) -> units_layout -> save_model -> the model folder alone
    rebuilds the same tokenizer (hash checked) and records dedup, as slam eval / generate read it."""
    from slam.model_folder import load_model, save_model
    from slam.units.dataset import UnitsWriter
    from slam.units.kmeans import fit_kmeans
    from slam.units.melkmeans import MelFeatures, MelParams
    from slam.units.tokenizer import load_tokenizer

    from slam.data import units_layout

    feats = MelFeatures(MelParams())(speechlike(3.0))
    km = fit_kmeans(feats, K, seed=0, params={"kind": "mel", **MelParams().to_dict()}, n_init=1)
    km.save(tmp_path / "km.npz")
    tok = load_tokenizer(f"mel:{tmp_path / 'km.npz'}")
    ds = tmp_path / "units"
    ds.mkdir()
    meta = {"n_units": K, "tokenizer_hash": tok.hash, "dedup": True, "tokenizer": tok.save_to(ds)}
    with UnitsWriter(ds, meta) as w:
        w.add("a", [1, 2, 3], [1, 1, 1], 0.1, "t")
    (tmp_path / "km.npz").unlink()  # only the dataset's embedded copy remains

    info = units_layout(ds)
    assert info.n_units == K and info.tokenizer_hash == tok.hash and info.tokenizer["dedup"] is True
    model, info = random_init("qwen2", K, overrides=TINY["qwen2"], info=info)
    folder = save_model(model, info, tmp_path / "model")
    _, saved = load_model(folder)
    assert not saved.tokenizer["kmeans"].startswith("/")  # relative to the model folder
    again = load_tokenizer(saved.tokenizer, root=folder)
    assert again.hash == saved.tokenizer_hash == tok.hash
    wav = speechlike(1.0, seed=3)
    assert np.array_equal(again.encode(wav), tok.encode(wav))
    other = tmp_path / "other"
    other.mkdir()
    with UnitsWriter(other, {**meta, "tokenizer_hash": "different"}) as w:
        w.add("b", [1], [1], 0.1, "t")
    with pytest.raises(SlamError, match="never mix"):
        units_layout([ds, other])
