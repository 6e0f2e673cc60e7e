"""HuBERT features from a chosen layer, batched so that a file's features never depend on its neighbours.

    enc = HubertFeatures("slprl/mhubert-base-25hz", layer=11)       # hub id or local folder
    feats = enc([wav_a, wav_b, wav_c])                              # list of [T_i, 768] float32 tensors
    len(feats[0]) == enc.n_frames(len(wav_a))                       # len(wav) // 640 for the 25 Hz stack

`layer=L` is HF's `output_hidden_states=True` -> `hidden_states[L]`, the output of the L-th transformer
layer (fairseq's `extract_features(output_layer=L)`); layers above L are never run (1/12 of the transformer
saved at L=11).

Why not just call `HubertModel(input_values, attention_mask)` on a padded batch: with transformers 5.23
that is exact only for "layer"-norm checkpoints without `conv_pos_batch_norm`. HuBERT-base and mHuBERT-25Hz
have `feat_extract_norm="group"`: the first conv layer's GroupNorm (one group per channel) normalises over
the whole time axis, padding included, and HF applies the attention mask only after the conv stack; so
every frame of a padded file shifts (HF's docs say not to pass a mask for these models, and slamkit passes
none, so its units change with the batch). mHuBERT-25Hz also has `conv_pos_batch_norm`: BatchNorm runs
before the positional conv, turning the zeroed padding frames into beta - gamma*mean/sigma != 0, which leaks
into the last 64 frames (half the 128-tap positional conv) of every shorter file.

So this module runs the same HF submodules with the same weights, in the same order, but (1) computes the
GroupNorm statistics over each file's own valid samples, (2) re-zeroes padding frames after the positional
BatchNorm, (3) masks padded keys in attention via transformers' own `create_bidirectional_mask`. All other
operations are per-frame or causal-free convs whose valid outputs read only valid inputs. A test checks:
alone == in a padded batch, and alone == HF's own forward (parity, every layer).

Framing: each file is zero-padded by (receptive field - stride) / 2 samples on both sides, 40 for the 25 Hz
stack (receptive field 720, stride 640), as slamkit does (slamkit hard-codes 40: for the published
mHuBERT-25Hz, named by hub id, folder or `_name_or_path`, a config implying another padding is refused); then T = len(wav) // 640, frame t centred on
sample t * 640 + 320, exactly like the mel tokenizer.

Memory: the first conv layer's output ([512, n/5] floats, ~6.6 MB per second of audio) dominates; batches
are capped by padded seconds (`max_batch_seconds`: 320 on a GPU, 80 on a CPU), and a file longer than the
cap runs alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from slam.errors import SlamError
from slam.units.published import MHUBERT_HUB_ID, SLAMKIT_PAD
from slam.utils import length_batches

ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "conv_dim",
             "conv_stride", "conv_kernel", "conv_bias", "feat_extract_norm", "feat_extract_activation",
             "do_stable_layer_norm", "conv_pos_batch_norm", "num_conv_pos_embeddings",
             "num_conv_pos_embedding_groups", "hidden_act", "layer_norm_eps", "feat_proj_layer_norm")


def load_hubert(model: str | Path, device: str | torch.device | None = None) -> Any:
    """HF HubertModel in eval mode, float32, from a hub id or a local folder."""
    from transformers import HubertModel

    try:
        m = HubertModel.from_pretrained(str(model))
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SlamError(f"cannot load HuBERT {str(model)!r}: {first} (a hub id needs network access or the "
                        f"HF cache; a local folder needs config.json + model.safetensors)") from None
    return m.eval().to(device or default_device())


def is_published_mhubert(name: str) -> bool:
    """The published mHuBERT-25Hz by hub id, a folder named after it, or its HF cache snapshot."""
    name = str(name).replace("\\", "/").rstrip("/")
    return (name == MHUBERT_HUB_ID or name.endswith("/mhubert-base-25hz")
            or "models--slprl--mhubert-base-25hz" in name)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class HubertFeatures:
    """Callable: list of 16 kHz float32 waves -> list of [T_i, hidden] float32 tensors (on the device)."""

    def __init__(self, model: Any, layer: int = 11, device: str | torch.device | None = None,
                 compile: bool = False, max_batch_seconds: float | None = None) -> None:
        model_name = None
        if isinstance(model, (str, Path)):
            model_name = str(model)
            model = load_hubert(model, device)
        elif device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        cfg = model.config
        if not 0 <= layer <= cfg.num_hidden_layers:
            raise SlamError(f"layer {layer} out of range: this HuBERT has layers 0..{cfg.num_hidden_layers}")
        self.layer = layer
        self.kernels = list(cfg.conv_kernel)
        self.strides = list(cfg.conv_stride)
        self.stride = math.prod(self.strides)
        rf, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            rf += (k - 1) * jump
            jump *= s
        self.receptive_field = rf
        self.pad = max(0, (rf - self.stride) // 2)
        name = str(model_name) if model_name is not None else str(getattr(cfg, "_name_or_path", ""))
        if is_published_mhubert(name) and (self.pad != SLAMKIT_PAD or self.stride != 640):
            # slamkit pads 40 samples each side for this model; units of another framing are shifted by
            # (pad - 40) samples and do not match the published model's units
            raise SlamError(f"{name}: the config's conv stack (kernels {self.kernels}, strides {self.strides}) "
                            f"gives receptive field {rf}, stride {self.stride} and padding {self.pad} samples, "
                            f"but the published mHuBERT-25Hz is framed with stride 640 and {SLAMKIT_PAD} samples "
                            f"of padding (as slamkit pads): not the published model's config")
        self.sample_rate = 16000
        self.frame_rate = self.sample_rate / self.stride
        # padded audio per forward: 320 s on a GPU (~2.1 GB for the first conv layer's output), 80 s on a CPU
        if max_batch_seconds is None:
            max_batch_seconds = 320.0 if self.device.type == "cuda" else 80.0
        self.max_batch_samples = int(max_batch_seconds * self.sample_rate)
        self._forward = torch.compile(self._forward_impl, dynamic=True) if compile else self._forward_impl

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def n_frames(self, n_samples: int) -> int:
        n = int(n_samples) + 2 * self.pad
        for k, s in zip(self.kernels, self.strides):
            n = (n - k) // s + 1
            if n <= 0:
                return 0
        return n

    @property
    def min_samples(self) -> int:
        """Shortest input that yields one frame (640 samples = 40 ms for the 25 Hz stack)."""
        return max(1, self.receptive_field - 2 * self.pad)

    def arch(self) -> dict:
        """Architecture fields that, with the weights, decide the features (part of the tokenizer hash)."""
        d = self.model.config.to_dict()
        return {k: d.get(k) for k in ARCH_KEYS} | {"layer": self.layer, "pad": self.pad}

    def weights_hash(self) -> str:
        """sha256 over every parameter and buffer (names, dtypes, shapes, bytes): format-independent, so the
        same weights from a .bin or a .safetensors hash the same."""
        import hashlib

        h = hashlib.sha256()
        for name, t in sorted(self.model.state_dict().items()):
            t = t.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    # --- the forward pass ----------------------------------------------------------------------------
    def _conv_lengths(self, lengths: torch.Tensor, upto: int) -> torch.Tensor:
        for k, s in zip(self.kernels[:upto], self.strides[:upto]):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths

    def _forward_impl(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, S] zero-padded, lengths [B] samples (framing pad included) -> ([B, T, H], frame lengths)."""
        from transformers.masking_utils import create_bidirectional_mask

        m, cfg = self.model, self.model.config
        h = x[:, None]
        convs = m.feature_extractor.conv_layers
        for i, conv in enumerate(convs):
            if i == 0 and cfg.feat_extract_norm == "group":
                # GroupNorm with one group per channel = per-channel standardisation over time; take the
                # statistics over this file's valid outputs only.
                h = conv.conv(h)
                n = self._conv_lengths(lengths, 1)
                valid = (torch.arange(h.shape[-1], device=h.device)[None] < n[:, None])[:, None].to(h.dtype)
                count = n.to(h.dtype)[:, None, None]
                mean = (h * valid).sum(-1, keepdim=True) / count
                var = (((h - mean) * valid) ** 2).sum(-1, keepdim=True) / count
                gn = conv.layer_norm
                h = (h - mean) / torch.sqrt(var + gn.eps) * gn.weight[None, :, None] + gn.bias[None, :, None]
                h = conv.activation(h) * valid
            else:
                h = conv(h)  # plain conv, or conv + per-frame LayerNorm: valid outputs read valid inputs only
        frames = self._conv_lengths(lengths, len(convs))
        mask = torch.arange(h.shape[-1], device=h.device)[None] < frames[:, None]  # [B, T]
        hidden = m.feature_projection(h.transpose(1, 2))
        hidden = hidden * mask[..., None].to(hidden.dtype)  # HF zeroes padded frames here too

        enc = m.encoder
        pce = enc.pos_conv_embed
        p = hidden.transpose(1, 2)
        if pce.batch_norm is not None:
            # BatchNorm(0) != 0: re-zero the padding, as a file alone sees the conv's own zero padding.
            p = pce.batch_norm(p) * mask[:, None].to(p.dtype)
        p = pce.activation(pce.padding(pce.conv(p))).transpose(1, 2)
        hidden = hidden + p
        if not cfg.do_stable_layer_norm:
            hidden = enc.layer_norm(hidden)
        attn = create_bidirectional_mask(config=cfg, inputs_embeds=hidden, attention_mask=mask)
        for layer in enc.layers[:self.layer]:
            hidden = layer(hidden, attention_mask=attn)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden, frames

    def _batches(self, lengths: Sequence[int], max_items: int) -> list[list[int]]:
        """Indices grouped by similar length (ascending, so padding stays small), capped by padded samples."""
        return length_batches(lengths, max_items, self.max_batch_samples)

    @torch.inference_mode()
    def __call__(self, wavs: Sequence[np.ndarray], batch_size: int = 16) -> list[torch.Tensor]:
        """Features of each wave, [T_i, H] with T_i = n_frames(len(wave)); raises on a too-short wave."""
        for w in wavs:
            if self.n_frames(len(w)) < 1:
                raise SlamError(f"audio of {len(w)} samples is shorter than one frame ({self.min_samples})")
        lengths = [len(w) + 2 * self.pad for w in wavs]
        out: list[torch.Tensor | None] = [None] * len(wavs)
        for idx in self._batches(lengths, max(1, batch_size)):
            longest = max(lengths[i] for i in idx)
            x = torch.zeros(len(idx), longest, dtype=torch.float32)
            for row, i in enumerate(idx):
                x[row, self.pad:self.pad + len(wavs[i])] = torch.from_numpy(np.asarray(wavs[i], np.float32))
            lens = torch.tensor([lengths[i] for i in idx])
            hidden, frames = self._forward(x.to(self.device, non_blocking=True), lens.to(self.device))
            for row, i in enumerate(idx):
                out[i] = hidden[row, :int(frames[row])].float()
        return out  # type: ignore[return-value]
