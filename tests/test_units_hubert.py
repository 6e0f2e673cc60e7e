"""HuBERT tokenizer on tiny random weights in the mHuBERT-25Hz layout: layer choice (parity with HF's own
forward), frame rate from the conv stack, and batch invariance (a file alone == the file in a padded batch)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import HubertConfig, HubertModel

from conftest import synth_speechlike
from slam.audio import load_audio
from slam.cli import main
from slam.errors import SlamError
from slam.units.dataset import load_table, read_rejects
from slam.units.hubert import HubertFeatures
from slam.units.kmeans import KMeans, fit_kmeans
from slam.units.tokenizer import load_tokenizer, tokenize


def tiny_hubert(stable: bool = False, seed: int = 0) -> HubertModel:
    """mHuBERT-25Hz's layout (8 convs, total stride 640, conv_pos_batch_norm) at toy width."""
    torch.manual_seed(seed)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       conv_dim=[16] * 8, conv_stride=[5, 2, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2, 2],
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, conv_pos_batch_norm=True,
                       feat_extract_norm="layer" if stable else "group", do_stable_layer_norm=stable)
    m = HubertModel(cfg).eval()
    with torch.no_grad():  # non-trivial norm statistics, as a trained checkpoint has
        bn = m.encoder.pos_conv_embed.batch_norm
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.bias.normal_()
        for mod in m.modules():
            if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.3)
    return m


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A saved tiny model folder and a k-means (.npy, like a published centroid file) fitted on layer 2."""
    root = tmp_path_factory.mktemp("hubert")
    model = tiny_hubert()
    model.save_pretrained(root / "model")
    enc = HubertFeatures(model, layer=2)
    feats = torch.cat(enc([synth_speechlike(3.0, seed=s) for s in range(3)])).numpy()
    km = fit_kmeans(feats, 12, seed=0, standardise=False, n_init=1)
    np.save(root / "km.npy", km.centroids)
    return root


WAV_LENGTHS = (16000, 9000, 23456, 700)


def wavs():
    return [synth_speechlike(n / 16000, seed=i) for i, n in enumerate(WAV_LENGTHS)]


@pytest.mark.parametrize("stable", [False, True])
def test_alone_equals_padded_batch(stable):
    model = tiny_hubert(stable)
    enc = HubertFeatures(model, layer=2)
    ws = wavs()
    alone = [enc([w])[0] for w in ws]
    batch = enc(ws, batch_size=8)
    assert [len(a) for a in alone] == [n // 640 for n in WAV_LENGTHS]
    for a, b in zip(alone, batch):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    # what slam avoids: HF's forward on a padded batch with an attention mask shifts the shorter file
    x = torch.zeros(2, 16080)
    x[0] = torch.from_numpy(np.pad(ws[0], (40, 40)))
    x[1, :9080] = torch.from_numpy(np.pad(ws[1], (40, 40)))
    mask = (x != 0).long()
    mask[1, 9080:] = 0
    mask[0] = 1
    with torch.no_grad():
        naive = model(x, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    assert (naive[1, :len(alone[1])] - alone[1]).abs().max() > 1e-2


@pytest.mark.parametrize("stable", [False, True])
def test_layer_parity_with_hf_forward(stable):
    model = tiny_hubert(stable)
    w = synth_speechlike(1.3, seed=5)
    x = torch.from_numpy(np.pad(w, (40, 40)))[None]
    with torch.no_grad():
        ref = model(x, output_hidden_states=True).hidden_states
    for layer in range(4):
        torch.testing.assert_close(HubertFeatures(model, layer=layer)([w])[0], ref[layer][0], atol=1e-5, rtol=1e-5)
    with pytest.raises(SlamError, match="layer"):
        HubertFeatures(model, layer=4)


def test_frame_rate_from_conv_stack():
    enc = HubertFeatures(tiny_hubert(), layer=1)
    assert (enc.stride, enc.receptive_field, enc.pad, enc.frame_rate) == (640, 720, 40, 25.0)
    for n in (640, 1279, 1280, 16000, 160000 + 17):
        assert enc.n_frames(n) == n // 640
    assert enc.n_frames(639) == 0
    with pytest.raises(SlamError, match="shorter than one frame"):
        enc([np.zeros(500, np.float32)])


def test_hubert_tokenizer_spec_batch_and_save_to(hub, tmp_path):
    tok = load_tokenizer(f"hubert:{hub / 'model'}@2:{hub / 'km.npy'}", device="cpu")
    assert (tok.kind, tok.n_units, tok.frame_rate) == ("hubert", 12, 25.0)
    ws = wavs()
    one_by_one = [tok.encode(w) for w in ws]
    assert [len(u) for u in one_by_one] == [n // 640 for n in WAV_LENGTHS]
    assert [u.tolist() for u in tok.encode_batch(ws, batch_size=3)] == [u.tolist() for u in one_by_one]
    assert len(set(np.concatenate(one_by_one).tolist())) > 3
    units, durs = tokenize(tok, ws[2])
    assert (np.repeat(units, durs) == one_by_one[2]).all()

    spec = tok.save_to(tmp_path / "lm")
    assert spec["model"] == str((hub / "model").resolve()) and spec["layer"] == 2
    again = load_tokenizer(spec, root=tmp_path / "lm")
    assert again.hash == tok.hash and (again.encode(ws[0]) == one_by_one[0]).all()
    copied = tok.save_to(tmp_path / "lm2", copy_model=True)
    assert copied["model"] == "hubert" and (tmp_path / "lm2/hubert/config.json").exists()
    assert load_tokenizer(copied, root=tmp_path / "lm2").hash == tok.hash
    # the saved .npz alone names model and layer
    assert load_tokenizer(str(tmp_path / "lm/tokenizer-kmeans.npz")).hash == tok.hash


def test_hash_tracks_weights_and_layer(hub, tmp_path):
    base = load_tokenizer(f"hubert:{hub / 'model'}@2:{hub / 'km.npy'}")
    other = tiny_hubert(seed=1)
    other.save_pretrained(tmp_path / "other")
    assert load_tokenizer(f"hubert:{tmp_path / 'other'}@2:{hub / 'km.npy'}").hash != base.hash
    assert load_tokenizer(f"hubert:{hub / 'model'}@1:{hub / 'km.npy'}").hash != base.hash
    KMeans(np.load(hub / "km.npy"), params={"kind": "hubert", "layer": 1}).save(tmp_path / "l1.npz")
    with pytest.raises(SlamError, match="layer"):
        load_tokenizer(f"hubert:{hub / 'model'}@2:{tmp_path / 'l1.npz'}")
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(SlamError, match="cannot load HuBERT"):
        load_tokenizer(f"hubert:{tmp_path / 'not_a_model'}@2:{hub / 'km.npy'}")
    with pytest.raises(SlamError, match="cannot load HuBERT"):  # offline here: a hub id cannot resolve
        load_tokenizer(f"hubert:nobody/no-such-hubert@2:{hub / 'km.npy'}")


def test_cli_fit_and_tokenize_with_hubert(hub, tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    lengths = (16000, 9000, 23456, 4000, 12000, 30000, 700, 8000, 15000, 2000)  # > 8 files: 2 decode chunks
    for i, n in enumerate(lengths):
        sf.write(audio / f"f{i}.wav", synth_speechlike(n / 16000, seed=i), 16000)
    sf.write(audio / "short.wav", np.zeros(600, np.float32), 16000)
    assert main(["fit-kmeans", str(audio), "--tokenizer", "hubert", "--model", str(hub / "model"), "--layer", "2",
                 "--units", "8", "--out", str(tmp_path / "km.npz"), "--batch-size", "3"]) == 0
    # the fitted .npz alone is the spec; batches of 4 with 2 decoding workers
    assert main(["tokenize", str(audio), "--tokenizer", str(tmp_path / "km.npz"), "--out", str(tmp_path / "u"),
                 "--workers", "2", "--batch-size", "4", "--no-dedup"]) == 0
    tok = load_tokenizer(str(tmp_path / "km.npz"))
    rows = load_table(tmp_path / "u").to_pylist()
    assert [r["id"] for r in rows] == [f"f{i}" for i in range(len(lengths))]
    for r in rows:
        assert r["units"] == tok.encode(load_audio(r["source"])).tolist()
    assert [r["id"] for r in read_rejects(tmp_path / "u")] == ["short"]


def test_batches_sorted_and_capped_by_padded_seconds():
    enc = HubertFeatures(tiny_hubert(), layer=1, max_batch_seconds=2.0)
    lengths = [16000, 40000, 9000, 12000, 20000]  # samples; 40000 alone exceeds the 32000 cap
    batches = enc._batches(lengths, max_items=3)
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert batches == [[2, 3], [0], [4], [1]]  # ascending length, len(batch) * longest <= 32000
    ws = [synth_speechlike(n / 16000, seed=i) for i, n in enumerate(lengths)]
    for a, b in zip(enc(ws, batch_size=3), [enc([w])[0] for w in ws]):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_published_mhubert_framing_must_be_slamkits_40_samples(tmp_path):
    """For the published mHuBERT-25Hz (recognised by name) the derived padding must be slamkit's 40 samples:
    the 25 Hz stack (kernels 10,3,3,3,3,2,2,2, strides 5,2,...) has receptive field 720, stride 640 ->
    (720 - 640) / 2 = 40. A config with a kernel-4 last layer (3 x 320 instead of 1 x 320 more samples) gives receptive field
    1360 -> 360: refused."""
    ok = tmp_path / "mhubert-base-25hz"
    tiny_hubert().save_pretrained(ok)
    assert HubertFeatures(str(ok), layer=1).pad == 40
    cfg = tiny_hubert().config
    cfg.conv_kernel = [10, 3, 3, 3, 3, 2, 2, 4]
    bad = tmp_path / "other" / "mhubert-base-25hz"
    HubertModel(cfg).save_pretrained(bad)
    with pytest.raises(SlamError, match=r"padding 360 samples.*published mHuBERT-25Hz.*40 samples"):
        HubertFeatures(str(bad), layer=1)
    # the same config under another name is the user's own model: framed by its own receptive field
    own = tmp_path / "my-hubert"
    HubertModel(cfg).save_pretrained(own)
    assert HubertFeatures(str(own), layer=1).pad == 360
    # an in-memory model is recognised by the name it was loaded under
    m = HubertModel(cfg)
    m.config._name_or_path = "slprl/mhubert-base-25hz"
    with pytest.raises(SlamError, match="padding 360"):
        HubertFeatures(m, layer=1)
