"""TWIST init, random init, model folders and the slamkit layout, on tiny random models built locally."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from slam.errors import SlamError
from slam.model import count_parameters, random_init, twist_init
from slam.model_folder import load_model, save_model
from slam.tokens import SlamInfo

N_UNITS = 20  # vocab 22 << the text vocab of 300, so truncation is visible
TEXT_VOCAB = 300

TINY = {
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6, attention_dropout=0.1),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False, rope_theta=5e5),
    "opt": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
                max_position_embeddings=128, dropout=0.1, attention_dropout=0.1, pad_token_id=1),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     hidden_dropout=0.1, attention_dropout=0.1, tie_word_embeddings=False, rope_theta=1e4 * 3),
}
ROPE = {"qwen2", "llama", "gpt_neox"}


def make_text_lm(model_type: str, folder, seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=TEXT_VOCAB, **TINY[model_type])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(folder)
    return model


def _is_vocab_key(key: str) -> bool:
    return any(s in key for s in ("embed_tokens", "embed_in", "lm_head", "embed_out"))


@pytest.mark.parametrize("model_type", list(TINY))
def test_twist_init_keeps_body_bit_identical(model_type, tmp_path):
    text = make_text_lm(model_type, tmp_path / "text")
    model, info = twist_init(tmp_path / "text", n_units=N_UNITS)

    text_sd, sd = text.state_dict(), model.state_dict()
    body = [k for k in text_sd if not _is_vocab_key(k)]
    assert len(body) > 10
    for k in body:
        assert torch.equal(sd[k], text_sd[k]), k
    assert info.vocab_size == N_UNITS + 2 == model.config.vocab_size
    emb_in, emb_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert emb_in.shape[0] == emb_out.shape[0] == 22
    # truncate = the first rows of the text table (TWIST / slamkit)
    assert torch.equal(emb_in, text.get_input_embeddings().weight[:22])
    assert torch.equal(emb_out, text.get_output_embeddings().weight[:22])
    tied = text.get_output_embeddings().weight is text.get_input_embeddings().weight
    assert (emb_out is emb_in) == tied
    # dropout 0 everywhere, cache off, special ids of the published layout
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    for key, value in model.config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            assert value == 0.0, key
    assert model.config.use_cache is False
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 1, 1)
    if model_type in ROPE:  # the rotary table is rebuilt from theta = 10,000
        assert model.config.rope_parameters["rope_theta"] == 10000.0
        rot = next(m for n, m in model.named_modules() if n.endswith("rotary_emb"))
        dim = rot.inv_freq.numel() * 2
        expected = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        torch.testing.assert_close(rot.inv_freq, expected)
        assert info.extra["rope_theta"] == 10000.0
    else:
        assert info.extra["rope_theta"] is None
    out = model(input_ids=torch.tensor([[1, 2, 3, 21, 1]]), use_cache=False).logits
    assert out.shape == (1, 5, 22) and torch.isfinite(out).all()


def test_fresh_unit_init_is_seeded_and_not_text_rows(tmp_path):
    text = make_text_lm("llama", tmp_path / "text")
    a, _ = twist_init(tmp_path / "text", n_units=N_UNITS, unit_init="fresh", seed=3)
    b, _ = twist_init(tmp_path / "text", n_units=N_UNITS, unit_init="fresh", seed=3)
    c, _ = twist_init(tmp_path / "text", n_units=N_UNITS, unit_init="fresh", seed=4)
    wa = a.get_input_embeddings().weight
    assert torch.equal(wa, b.get_input_embeddings().weight)
    assert not torch.equal(wa, c.get_input_embeddings().weight)
    assert not torch.equal(wa, text.get_input_embeddings().weight[:22])
    assert abs(float(wa.detach().std()) - text.config.initializer_range) < 0.01
    with pytest.raises(SlamError):
        twist_init(tmp_path / "text", n_units=N_UNITS, unit_init="zeros")


def test_interleaved_layout_keeps_all_text_rows(tmp_path):
    """A larger layout (text vocab + units + markers) copies every text row and draws the appended ones."""
    text = make_text_lm("qwen2", tmp_path / "text")
    info = SlamInfo(n_units=N_UNITS, unit_offset=TEXT_VOCAB, vocab_size=TEXT_VOCAB + N_UNITS + 2)
    model, info = twist_init(tmp_path / "text", n_units=N_UNITS, info=info)
    w = model.get_input_embeddings().weight
    assert w.shape[0] == TEXT_VOCAB + N_UNITS + 2
    assert torch.equal(w[:TEXT_VOCAB], text.get_input_embeddings().weight)


def test_save_load_roundtrip_and_plain_hf_load(tmp_path):
    from transformers import AutoModelForCausalLM

    make_text_lm("qwen2", tmp_path / "text")
    model, info = twist_init(tmp_path / "text", n_units=N_UNITS, tokenizer={"name": "mel", "k": 20},
                             tokenizer_hash="abc")
    folder = save_model(model, info, tmp_path / "m")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors", "slam.json"]
    assert json.loads((folder / "config.json").read_text())["use_cache"] is False
    ids = torch.tensor([[1, 5, 6, 7, 1], [1, 9, 8, 2, 1]])
    ref = model(input_ids=ids, use_cache=False).logits
    loaded, info2 = load_model(folder)
    assert info2 == info
    assert torch.equal(loaded(input_ids=ids).logits, ref)
    plain = AutoModelForCausalLM.from_pretrained(folder)  # a standard HF folder, no slam needed
    assert torch.equal(plain(input_ids=ids).logits, ref)
    assert count_parameters(loaded) == count_parameters(model)
    bf16, _ = load_model(folder, dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_save_model_is_atomic(tmp_path, monkeypatch):
    make_text_lm("qwen2", tmp_path / "text")
    model, info = twist_init(tmp_path / "text", n_units=N_UNITS)
    folder = save_model(model, info, tmp_path / "m")
    before = (folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)

    def boom(self, folder):
        raise RuntimeError("killed while writing slam.json")

    monkeypatch.setattr(SlamInfo, "save", boom)
    with pytest.raises(RuntimeError):
        save_model(model, info, folder)
    assert (folder / "model.safetensors").read_bytes() == before  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "text"]  # no temp folder left behind


def test_random_init_is_seeded():
    overrides = TINY["qwen2"] | {"attention_dropout": 0.2}
    a, info = random_init("qwen2", n_units=N_UNITS, overrides=overrides, seed=1)
    b, _ = random_init("qwen2", n_units=N_UNITS, overrides=overrides, seed=1)
    c, _ = random_init("qwen2", n_units=N_UNITS, overrides=overrides, seed=2)
    w = a.model.layers[0].mlp.up_proj.weight
    assert torch.equal(w, b.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(w, c.model.layers[0].mlp.up_proj.weight)
    assert a.config.vocab_size == 22 and a.config.attention_dropout == 0.0
    assert a.config.rope_parameters["rope_theta"] == 10000.0 and info.base_model is None
    with pytest.raises(SlamError):
        random_init("no-such-family-or-folder", n_units=N_UNITS)


# --- slamkit UnitLM layout -----------------------------------------------------------------------------------
def write_slamkit_folder(model, folder, **config_changes):
    """The published layout: nested Qwen2 base_config, model_type speech_language_model, `lm.` weights."""
    folder.mkdir(parents=True)
    base = model.config.to_dict()
    base.update(pad_token_id=0, bos_token_id=1, eos_token_id=1)
    # as written by transformers 4.x (slamkit's era): rope_theta at the top, private keys, torch_dtype
    base["rope_theta"] = base.pop("rope_parameters")["rope_theta"]
    base.update(_name_or_path="Qwen/Qwen2.5-0.5B", _attn_implementation_autoset=True, torch_dtype="float32",
                use_cache=True, transformers_version="4.48.0")
    top = {"model_type": "speech_language_model", "architectures": ["UnitLM"],
           "base_model_name": "Qwen/Qwen2.5-0.5B", "base_config": base, "vocab_size": model.config.vocab_size,
           "twist_init": True, "use_cache": True, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1,
           "tie_word_embeddings": True}
    top.update(config_changes)
    (folder / "config.json").write_text(json.dumps(top))
    # tied: the head is stored once (as safetensors does for shared tensors)
    state = {f"lm.{k}": v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"))


def test_slamkit_folder_loads_and_converts(tmp_path, speechlike):
    from transformers import AutoModelForCausalLM

    from slam.cli import main

    make_text_lm("qwen2", tmp_path / "text")
    src_model, _ = twist_init(tmp_path / "text", n_units=N_UNITS, seed=5, rope_theta=500.0)
    src_model.eval()
    write_slamkit_folder(src_model, tmp_path / "published")
    ids = torch.tensor([[1, 2, 3, 4, 21, 1]])
    ref = src_model(input_ids=ids, use_cache=False).logits

    model, info = load_model(tmp_path / "published")
    assert (info.n_units, info.pad_id, info.bos_id, info.unit_offset) == (N_UNITS, 0, 1, 2)
    assert info.base_model == "Qwen/Qwen2.5-0.5B"
    assert model.config.use_cache is False and model.config.rope_parameters["rope_theta"] == 500.0
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)

    assert main(["convert", str(tmp_path / "published"), "--out", str(tmp_path / "conv")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "conv")
    assert torch.equal(plain(input_ids=ids).logits, ref)
    assert SlamInfo.load(tmp_path / "conv").extra["converted_from"] == "slamkit UnitLM"

    # with the speech tokenizer: embedded as .npz, hash recorded, loadable from the model folder alone
    from slam.units.kmeans import fit_kmeans
    from slam.units.melkmeans import MelFeatures, MelParams
    from slam.units.tokenizer import load_tokenizer

    feats = MelFeatures(MelParams())(speechlike(3.0))
    for k, name in ((N_UNITS, "km.npz"), (N_UNITS + 1, "km21.npz")):
        fit_kmeans(feats, k, seed=0, params={"kind": "mel", **MelParams().to_dict()}, n_init=1).save(
            tmp_path / name)
    assert main(["convert", str(tmp_path / "published"), "--out", str(tmp_path / "conv2"),
                 "--tokenizer", f"mel:{tmp_path / 'km.npz'}"]) == 0
    info2 = SlamInfo.load(tmp_path / "conv2")
    tok = load_tokenizer(info2.tokenizer, root=tmp_path / "conv2")
    assert tok.hash == info2.tokenizer_hash == load_tokenizer(f"mel:{tmp_path / 'km.npz'}").hash
    assert info2.tokenizer["dedup"] is True and not info2.tokenizer["kmeans"].startswith("/")
    assert main(["convert", str(tmp_path / "published"), "--out", str(tmp_path / "conv3"),
                 "--tokenizer", f"mel:{tmp_path / 'km21.npz'}"]) == 2  # 21 units: not this model's


def test_slamkit_mismatches_fail_clearly(tmp_path, capsys):
    from slam.cli import main

    make_text_lm("qwen2", tmp_path / "text")
    src_model, _ = twist_init(tmp_path / "text", n_units=N_UNITS)
    base = src_model.config.to_dict() | {"pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 2}
    write_slamkit_folder(src_model, tmp_path / "bad-ids", base_config=base)
    with pytest.raises(SlamError, match="layout mismatch"):
        load_model(tmp_path / "bad-ids")
    write_slamkit_folder(src_model, tmp_path / "bad-vocab", vocab_size=30)
    with pytest.raises(SlamError, match="rows"):
        load_model(tmp_path / "bad-vocab")
    assert main(["convert", str(tmp_path / "text"), "--out", str(tmp_path / "x")]) == 2
    assert "not a slamkit" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_slam_recipe_shape_has_the_papers_parameter_count():
    """Qwen2.5-0.5B's body with the 502-token vocabulary = 358,347,904 parameters (the paper's count), built
    through random_init on the meta device (no memory, no weights)."""
    shape = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=32768)
    with torch.device("meta"):
        model, info = random_init("qwen2", 500, overrides=shape)
    assert info.vocab_size == 502
    assert count_parameters(model) == 358_347_904
