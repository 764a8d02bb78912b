"""The face-parsing mask of the paste-back: ParseNet (`parsing_parsenet.pth`) as the official pipeline uses it.

Official (facelib `FaceRestoreHelper.paste_faces_to_input_image`, use_parse=True): the restored 512 px face goes through
ParseNet (PSFRGAN's parsing network, 19 classes, BatchNorm); pixels of classes 0, 14, 16, 17, 18 (background, hat,
neck, neck-lace, cloth in the CelebAMask ordering) get 0, all others 255; the mask is Gaussian-blurred twice
(101 x 101, sigma 11), its outer 10 pixels are zeroed and it is scaled to [0, 1]. The paste-back then takes the
per-pixel minimum of this mask and the soft square mask (paste_back.py).

facexlib ships the same network but imports torchvision at package import (not importable here, and the pack must not
depend on it), so the network is written out below with the official parameter names, so `parsing_parsenet.pth`
loads strictly through the safe unpickler.

Without parsing weights the pipeline uses only the soft square mask (the official behaviour with use_parse=False):
the whole aligned square is pasted, hair and background inside it included, with a blurred edge. That is a visible
difference from the official output, so it is an explicit choice (no weights given), never a silent fallback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelFileError
from ..loading.safe_pickle import load_torch_checkpoint
from ..loading.state_dict import LazyStateDict, build_on_meta, materialize
from .image_ops import gaussian_blur

PARSING_HINT = ("use parsing_parsenet.pth (CodeFormer release v0.1.0 / facexlib; official path "
                "pretrained_models/facelib/), or run without parsing to paste with the soft square mask only")
# Classes kept out of the paste-back mask (MASK_COLORMAP entries that are 0).
EXCLUDED_CLASSES = (0, 14, 16, 17, 18)
MASK_BLUR_SIZE, MASK_BLUR_SIGMA, MASK_BORDER = 101, 11.0, 10


@dataclass(frozen=True)
class ParseNetConfig:
    """Channels after each encoder stage (the first is the stem conv), the body depth, the decoder stage outputs."""

    encoder_channels: tuple[int, ...] = (64, 128, 256, 256, 256)
    res_depth: int = 10
    decoder_channels: tuple[int, ...] = (256, 256, 128, 64)
    parsing_ch: int = 19

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, tuple[int, ...]]) -> "ParseNetConfig":
        def stages(prefix):
            indices = sorted({int(n.split(".")[1]) for n in shapes if n.startswith(prefix + ".")})
            return [shapes[f"{prefix}.{i}.conv1.conv2d.weight"][0] for i in indices if i > 0 or prefix != "encoder"]

        encoder = [shapes["encoder.0.conv2d.weight"][0]] + stages("encoder")
        body = {n.split(".")[1] for n in shapes if n.startswith("body.")}
        return cls(encoder_channels=tuple(encoder), res_depth=len(body),
                   decoder_channels=tuple(stages("decoder")),
                   parsing_ch=shapes["out_mask_conv.conv2d.weight"][0])


class NormLayer(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.norm(x)


class ConvLayer(nn.Module):
    """[nearest x2] -> reflection pad 1 -> 3x3 conv [stride 2] -> [BatchNorm] -> [LeakyReLU 0.2]."""

    def __init__(self, in_ch: int, out_ch: int, scale: str = "none", norm: bool = False, relu: bool = False):
        super().__init__()
        self.scale = scale
        self.conv2d = nn.Conv2d(in_ch, out_ch, 3, stride=2 if scale == "down" else 1, bias=not norm)
        self.norm = NormLayer(out_ch) if norm else None
        self.relu = relu

    def forward(self, x):
        if self.scale == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, 0.2) if self.relu else x


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, scale: str = "none"):
        super().__init__()
        self.shortcut_func = ConvLayer(in_ch, out_ch, scale) if scale != "none" or in_ch != out_ch else None
        self.conv1 = ConvLayer(in_ch, out_ch, "up" if scale == "up" else "none", norm=True, relu=True)
        self.conv2 = ConvLayer(out_ch, out_ch, "down" if scale == "down" else "none", norm=True)

    def forward(self, x):
        identity = x if self.shortcut_func is None else self.shortcut_func(x)
        return identity + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """Face parsing network of `parsing_parsenet.pth`; forward returns (class logits, reconstructed image)."""

    def __init__(self, config: ParseNetConfig | None = None):
        super().__init__()
        self.config = config = config or ParseNetConfig()
        enc = config.encoder_channels
        self.encoder = nn.Sequential(ConvLayer(3, enc[0]),
                                     *[ResidualBlock(a, b, "down") for a, b in zip(enc[:-1], enc[1:])])
        self.body = nn.Sequential(*[ResidualBlock(enc[-1], enc[-1]) for _ in range(config.res_depth)])
        dec = (enc[-1],) + config.decoder_channels
        self.decoder = nn.Sequential(*[ResidualBlock(a, b, "up") for a, b in zip(dec[:-1], dec[1:])])
        self.out_img_conv = ConvLayer(dec[-1], 3)
        self.out_mask_conv = ConvLayer(dec[-1], config.parsing_ch)

    def forward(self, x):
        feat = self.encoder(x)
        x = self.decoder(feat + self.body(feat))
        return self.out_mask_conv(x), self.out_img_conv(x)


def load_parsenet(path: str | os.PathLike, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> ParseNet:
    """`parsing_parsenet.pth` (a plain state dict, read by the safe unpickler) or a safetensors file; strict."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"face parsing weights not found: {path}; {PARSING_HINT}")
    if path.endswith(".safetensors"):
        state = LazyStateDict(path)
        shapes = {name: state.shape(name) for name in state}
    else:
        content = load_torch_checkpoint(path)
        for key in ("params_ema", "params", "state_dict"):
            if isinstance(content, Mapping) and isinstance(content.get(key), Mapping):
                content = content[key]
        if not isinstance(content, Mapping):
            raise ModelFileError(f"{path}: the checkpoint holds no state dict; {PARSING_HINT}")
        state = {k: v for k, v in content.items() if isinstance(v, torch.Tensor)}
        shapes = {k: tuple(v.shape) for k, v in state.items()}
    if "encoder.0.conv2d.weight" not in shapes or "out_mask_conv.conv2d.weight" not in shapes:
        raise ModelFileError(f"{path} is not a ParseNet face-parsing model; {PARSING_HINT}")
    model = build_on_meta(lambda: ParseNet(ParseNetConfig.from_state_dict(shapes)))
    materialize(model, ((k, state[k]) for k in state), dtype=dtype, device=device, source=path)
    return model.eval().requires_grad_(False)


def random_parsenet_state_dict(config: ParseNetConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random ParseNet weights for tests and tiny models: one `torch.Generator(seed)`, keys in sorted
    order, standard normals scaled as kernels * fan_in^-0.5, BatchNorm scales 1 + 0.1 n, running variances
    1 + 0.25 |n|, other 1-D tensors 0.1 n; `num_batches_tracked` 0."""
    shapes = {k: tuple(v.shape) for k, v in build_on_meta(lambda: ParseNet(config)).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
            continue
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if len(shape) >= 2:
            out[name] = noise * (noise[0].numel() ** -0.5)
        elif name.endswith("running_var"):
            out[name] = 1.0 + 0.25 * noise.abs()
        elif name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * noise
        else:
            out[name] = 0.1 * noise
    return out


@torch.no_grad()
def parsing_mask(parsenet: ParseNet, faces: torch.Tensor) -> torch.Tensor:
    """Official paste-back parsing mask of restored faces (N, 3, 512, 512), RGB levels 0..255 -> (N, 1, 512, 512) in
    [0, 1], float32."""
    dtype = next(parsenet.parameters()).dtype
    logits = parsenet(((faces / 255.0 - 0.5) / 0.5).to(dtype))[0]
    labels = logits.argmax(dim=1, keepdim=True)
    keep = torch.ones(parsenet.config.parsing_ch, device=faces.device, dtype=torch.float32)
    keep[list(EXCLUDED_CLASSES)] = 0.0
    mask = keep[labels] * 255.0
    mask = gaussian_blur(gaussian_blur(mask, MASK_BLUR_SIZE, MASK_BLUR_SIGMA), MASK_BLUR_SIZE, MASK_BLUR_SIGMA)
    mask[..., :MASK_BORDER, :] = 0
    mask[..., -MASK_BORDER:, :] = 0
    mask[..., :, :MASK_BORDER] = 0
    mask[..., :, -MASK_BORDER:] = 0
    return mask / 255.0
