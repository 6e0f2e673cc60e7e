"""Unit HiFi-GAN: architecture with random weights, published checkpoint layout, strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from slam.errors import SlamError
from slam.vocoder.hifigan import CodeHiFiGAN, HifiGanConfig, load_hifigan

# A small config in the published JSON layout (the real one: 512 channels, 500 units, same structure).
TINY_JSON = {
    "resblock": "1", "num_embeddings": 20, "embedding_dim": 16, "model_in_dim": 16,
    "upsample_rates": [5, 4, 4, 2, 2, 2], "upsample_kernel_sizes": [11, 8, 8, 4, 4, 4],
    "upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 7], "resblock_dilation_sizes": [[1, 3, 5]] * 2,
    "dur_prediction_weight": 1.0,
    "dur_predictor_params": {"encoder_embed_dim": 16, "var_pred_hidden_dim": 16, "var_pred_kernel_size": 3,
                             "var_pred_dropout": 0.5},
    "sampling_rate": 16000, "segment_size": 8960, "num_mels": 80,
}


def tiny(seed: int = 0) -> CodeHiFiGAN:
    torch.manual_seed(seed)
    return CodeHiFiGAN(HifiGanConfig.from_published(TINY_JSON)).eval()


def published_style_state(model: CodeHiFiGAN) -> dict[str, torch.Tensor]:
    """The generator state as the published training code saves it: every conv of the generator under
    `torch.nn.utils.weight_norm` (weight_g / weight_v keys), the embedding and duration predictor plain."""
    import copy
    import warnings

    m = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for name, mod in m.named_modules():
            if isinstance(mod, (nn.Conv1d, nn.ConvTranspose1d)) and not name.startswith("dur_predictor"):
                torch.nn.utils.weight_norm(mod)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_upsampling_is_640_samples_per_frame_and_deterministic():
    m = tiny()
    assert m.samples_per_frame == 640
    units = np.array([3, 7, 7, 1, 19, 0])
    a = m.vocode(units, durations=np.ones(6, dtype=int))
    b = m.vocode(units, durations=np.ones(6, dtype=int))
    assert a.dtype == np.float32 and a.shape == (6 * 640,)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0


def test_durations_expand_units():
    m = tiny()
    units = np.array([2, 5, 9])
    d = np.array([3, 1, 2])
    wav = m.vocode(units, d)
    assert wav.shape == (6 * 640,)
    # given durations == the expanded frame sequence with one frame each
    np.testing.assert_allclose(wav, m.vocode(np.repeat(units, d), np.ones(6, dtype=int)), atol=1e-6)


def test_duration_predictor_fills_unknown_durations():
    m = tiny()
    with torch.no_grad():  # make the predictor say log(1 + d) = log(4): d = 3 frames for every unit
        m.dur_predictor.proj.weight.zero_()
        m.dur_predictor.proj.bias.fill_(float(np.log(4.0)))
    units = np.array([1, 2, 3, 4])
    assert m.predict_durations(torch.tensor(units)).tolist() == [3, 3, 3, 3]
    assert m.vocode(units).shape == (12 * 640,)
    # known durations are kept, the zeros (e.g. generated units) are predicted
    assert m.vocode(units, np.array([1, 0, 2, 0])).shape == ((1 + 3 + 2 + 3) * 640,)
    with torch.no_grad():  # exp(-5) - 1 < 0 rounds below 1: clamped to at least one frame
        m.dur_predictor.proj.bias.fill_(-5.0)
    assert m.predict_durations(torch.tensor(units)).tolist() == [1, 1, 1, 1]


def test_rejects_bad_units():
    m = tiny()
    with pytest.raises(SlamError, match=r"\[0, 20\)"):
        m.vocode(np.array([1, 20]))
    assert m.vocode(np.array([], dtype=int)).shape == (0,)


def test_loads_published_layout_checkpoint(tmp_path):
    source = tiny(seed=1)
    state = published_style_state(source)
    assert "conv_pre.weight_g" in state and "ups.0.weight_v" in state and "resblocks.3.convs2.2.weight_g" in state
    assert "dur_predictor.conv2.0.weight" in state and "dict.weight" in state and "conv_pre.weight" not in state
    torch.save({"generator": state}, tmp_path / "voc.pt")
    (tmp_path / "voc_config.json").write_text(json.dumps(TINY_JSON))
    loaded = load_hifigan(tmp_path / "voc.pt")
    units = np.array([4, 8, 15, 16, 2, 3])
    np.testing.assert_allclose(loaded.vocode(units), source.vocode(units), atol=1e-5)
    assert (tmp_path / "voc.safetensors").exists()  # converted once, read from there next time
    again = load_hifigan(tmp_path / "voc.pt")
    np.testing.assert_allclose(again.vocode(units), source.vocode(units), atol=1e-5)


def test_mismatched_checkpoint_fails_clearly(tmp_path):
    state = published_style_state(tiny())
    state["dict.weight"] = torch.zeros(21, 16)  # a vocoder for another unit count
    del state["conv_post.bias"]
    torch.save({"generator": state}, tmp_path / "voc.pt")
    (tmp_path / "voc_config.json").write_text(json.dumps(TINY_JSON))
    with pytest.raises(SlamError, match=r"missing 1 keys.*conv_post.bias.*shape mismatches.*dict.weight"):
        load_hifigan(tmp_path / "voc.pt")


def test_published_files_are_pinned(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SlamError, match="hifigan_lj_mhubert_base_25hz.pt.*offline"):
        load_hifigan(tmp_path)
    (tmp_path / "hifigan_lj_mhubert_base_25hz.pt").write_bytes(b"not the published file")
    with pytest.raises(SlamError, match=r"sha256 [0-9a-f]{64} is not the published hifigan_lj_mhubert_base_25hz.pt "
                                        r"\(sha256 d88224e9.*dl.fbaipublicfiles.com/textless_nlp/twist/"):
        load_hifigan(tmp_path)
    # offline with nothing cached: the message names the URL to fetch by hand and where to put it
    monkeypatch.setenv("SLAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SlamError, match=r"fetch https://dl.fbaipublicfiles.com/textless_nlp/twist/speech_tokenizer/"
                                        r"hifigan_lj_mhubert_base_25hz.pt by hand into .*cache/published/"):
        load_hifigan(None)


def test_duration_predictor_built_from_dur_predictor_params(tmp_path):
    """textlesslib/slamkit build the predictor on `dur_predictor_params`, not on `dur_prediction_weight`: a
    config without the weight must still load the 10 `dur_predictor.*` tensors (and use them)."""
    cfg = {k: v for k, v in TINY_JSON.items() if k != "dur_prediction_weight"}
    cfg["dur_predictor_params"] = {**cfg["dur_predictor_params"], "var_pred_hidden_dim": 24}
    torch.manual_seed(3)
    source = CodeHiFiGAN(HifiGanConfig.from_published(cfg)).eval()
    state = published_style_state(source)
    assert sum(k.startswith("dur_predictor.") for k in state) == 10
    assert tuple(state["dur_predictor.conv1.0.weight"].shape) == (24, 16, 3)  # hidden from the params
    torch.save({"generator": state}, tmp_path / "voc.pt")
    (tmp_path / "voc_config.json").write_text(json.dumps(cfg))
    loaded = load_hifigan(tmp_path / "voc.pt")
    units = np.array([4, 8, 15, 16])
    assert loaded.dur_predictor is not None and not loaded.published
    np.testing.assert_array_equal(loaded.predict_durations(torch.tensor(units)),
                                  source.predict_durations(torch.tensor(units)))
    # without the params there is no predictor, whatever the loss weight says
    assert CodeHiFiGAN(HifiGanConfig.from_published(
        {k: v for k, v in TINY_JSON.items() if k != "dur_predictor_params"})).dur_predictor is None
    bad = {**TINY_JSON, "dur_predictor_params": {**TINY_JSON["dur_predictor_params"], "encoder_embed_dim": 32}}
    with pytest.raises(SlamError, match="encoder_embed_dim 32 != embedding_dim 16"):
        HifiGanConfig.from_published(bad)


def test_unsupported_variants_are_refused():
    with pytest.raises(SlamError, match="f0"):
        HifiGanConfig.from_published({**TINY_JSON, "f0": True})
    with pytest.raises(SlamError, match="resblock"):
        HifiGanConfig.from_published({**TINY_JSON, "resblock": "2"})


def test_load_vocoder_picks_hifigan_for_hubert_units(tmp_path):
    from slam.tokens import SlamInfo
    from slam.vocoder import load_vocoder

    torch.save({"generator": published_style_state(tiny())}, tmp_path / "voc.pt")
    (tmp_path / "voc_config.json").write_text(json.dumps(TINY_JSON))
    voc = load_vocoder(SlamInfo(n_units=20, tokenizer={"kind": "hubert"}), tmp_path, str(tmp_path / "voc.pt"))
    assert isinstance(voc, CodeHiFiGAN)
    with pytest.raises(SlamError, match="speaks 20 units but this model has 30"):
        load_vocoder(SlamInfo(n_units=30, tokenizer={"kind": "hubert"}), tmp_path, str(tmp_path / "voc.pt"))
