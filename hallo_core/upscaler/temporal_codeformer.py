"""Hallo2's temporal CodeFormer: the VQ face restorer of the high-resolution stage.

CodeFormer (a VQGAN encoder, a 1024 x 256 codebook, a transformer that predicts one code per 16 x 16 token, AdaIN,
four controllable feature transforms and the VQGAN decoder) with Hallo2's one change: every transformer layer ends
with a temporal block, self-attention across the F frames of a clip at each token position followed by its own
feed-forward. There is no temporal position encoding, so the temporal block is equivariant to frame order.
Parameter names are the official ones, so `hallo2/net_g.pth` (`params_ema`) loads strictly.

Layouts: clips (B, F, 3, 512, 512) in [-1, 1]; frames are the inner factor of the flattened (B*F) batch; tokens
(B*F, 256, C) batch-first, token d = row * 16 + column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

# The official code fixes these (codeformer_arch.py: CodeFormer.__init__ / VQAutoEncoder(512, 64, [1,2,2,4,4,8], ...)).
CHANNEL_MULTIPLIERS = (1, 2, 2, 4, 4, 8)
RES_BLOCKS_PER_LEVEL = 2
ATTENTION_RESOLUTION = 16
# Which encoder block output feeds which fusion, and after which decoder block it is applied, by feature size.
FUSE_ENCODER_BLOCK = {"512": 2, "256": 5, "128": 8, "64": 11, "32": 14, "16": 18}
FUSE_GENERATOR_BLOCK = {"16": 6, "32": 9, "64": 12, "128": 15, "256": 18, "512": 21}
DEFAULT_CONNECT_LIST = ("32", "64", "128", "256")


@dataclass(frozen=True)
class TemporalCodeFormerConfig:
    """Sizes of the network; field names follow the official constructor arguments."""

    dim_embd: int = 512
    n_head: int = 8
    n_layers: int = 9
    codebook_size: int = 1024
    connect_list: tuple[str, ...] = DEFAULT_CONNECT_LIST
    nf: int = 64  # convolution base width (official: 64); smaller only in test goldens
    emb_dim: int = 256  # codebook vector size
    img_size: int = 512

    @property
    def latent_side(self) -> int:
        return self.img_size // 2 ** (len(CHANNEL_MULTIPLIERS) - 1)

    @property
    def latent_size(self) -> int:
        return self.latent_side**2

    @property
    def dim_mlp(self) -> int:
        return 2 * self.dim_embd

    def channels(self, size: str) -> int:
        """Feature channels at spatial size `size` (official `self.channels`: 16->512 ... 512->64)."""
        level = len(CHANNEL_MULTIPLIERS) - (int(size) // self.latent_side).bit_length()
        return self.nf * CHANNEL_MULTIPLIERS[level]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["connect_list"] = list(self.connect_list)
        return out

    @classmethod
    def from_dict(cls, values: Mapping) -> "TemporalCodeFormerConfig":
        """Known fields only (a golden's JSON may carry more); `connect_list` as strings."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        if "connect_list" in kwargs:
            kwargs["connect_list"] = tuple(str(s) for s in kwargs["connect_list"])
        return cls(**kwargs)

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, tuple[int, ...]],
                        n_head: int | None = None) -> "TemporalCodeFormerConfig":
        """Read the sizes from parameter shapes (name -> shape). The head count is not in the shapes: it defaults to
        the official head width of 64 (`dim_embd // 64`) unless given."""
        codebook_size, emb_dim = shapes["quantize.embedding.weight"]
        latent_size, dim_embd = shapes["position_emb"]
        n_layers = len({name.split(".")[1] for name in shapes if name.startswith("ft_layers.")})
        connect = tuple(s for s in ("32", "64", "128", "256", "16", "512")
                        if f"fuse_convs_dict.{s}.scale.0.weight" in shapes)
        if n_head is None:
            n_head = max(1, dim_embd // 64)
        side = int(round(latent_size**0.5))
        return cls(dim_embd=dim_embd, n_head=n_head, n_layers=n_layers, codebook_size=codebook_size,
                   connect_list=connect, nf=shapes["encoder.blocks.0.weight"][0], emb_dim=emb_dim,
                   img_size=side * 2 ** (len(CHANNEL_MULTIPLIERS) - 1))


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    # x * sigmoid(x) rather than F.silu: the same function, rounded as the official code rounds it
    return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_out = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return h + (self.conv_out(x) if self.conv_out is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, scaled by channels^-0.5."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)
        k = self.k(y).reshape(b, c, h * w)
        v = self.v(y).reshape(b, c, h * w)
        # explicit softmax(q k) v in the official order (not SDPA): bit-identical outputs on CPU
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)
        y = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # pad right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """VQGAN encoder: 512 px -> (emb_dim, 16, 16); 25 blocks in the official order."""

    def __init__(self, config: TemporalCodeFormerConfig):
        super().__init__()
        nf, resolution = config.nf, config.img_size
        blocks: list[nn.Module] = [nn.Conv2d(3, nf, 3, padding=1)]
        in_ch = nf
        for level, mult in enumerate(CHANNEL_MULTIPLIERS):
            for _ in range(RES_BLOCKS_PER_LEVEL):
                blocks.append(ResBlock(in_ch, nf * mult))
                in_ch = nf * mult
                if resolution == ATTENTION_RESOLUTION:
                    blocks.append(AttnBlock(in_ch))
            if level != len(CHANNEL_MULTIPLIERS) - 1:
                blocks.append(Downsample(in_ch))
                resolution //= 2
        blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]  # non-local block
        blocks += [_group_norm(in_ch), nn.Conv2d(in_ch, config.emb_dim, 3, padding=1)]  # no activation between
        self.blocks = nn.ModuleList(blocks)


class Generator(nn.Module):
    """VQGAN decoder: (emb_dim, 16, 16) -> 3 x 512 x 512; 25 blocks in the official order."""

    def __init__(self, config: TemporalCodeFormerConfig):
        super().__init__()
        nf = config.nf
        in_ch = nf * CHANNEL_MULTIPLIERS[-1]
        resolution = config.latent_side
        blocks: list[nn.Module] = [nn.Conv2d(config.emb_dim, in_ch, 3, padding=1)]
        blocks += [ResBlock(in_ch, in_ch), AttnBlock(in_ch), ResBlock(in_ch, in_ch)]  # non-local block
        for level in reversed(range(len(CHANNEL_MULTIPLIERS))):
            for _ in range(RES_BLOCKS_PER_LEVEL):
                blocks.append(ResBlock(in_ch, nf * CHANNEL_MULTIPLIERS[level]))
                in_ch = nf * CHANNEL_MULTIPLIERS[level]
                if resolution == ATTENTION_RESOLUTION:
                    blocks.append(AttnBlock(in_ch))
            if level != 0:
                blocks.append(Upsample(in_ch))
                resolution *= 2
        blocks += [_group_norm(in_ch), nn.Conv2d(in_ch, 3, 3, padding=1)]
        self.blocks = nn.ModuleList(blocks)


class Codebook(nn.Module):
    def __init__(self, codebook_size: int, emb_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, emb_dim)


class TemporalTransformerLayer(nn.Module):
    """CodeFormer's pre-norm transformer layer (spatial attention over the tokens of each frame, feed-forward) followed
    by Hallo2's temporal block (attention over the frames at each token, feed-forward). Official `TransformerSALayer`.

    The learned position is added to queries and keys, not values. `nn.MultiheadAttention` called as the official code
    calls it (sequence-first, weights computed) keeps the logits bit-identical to the official ones on CPU.
    """

    def __init__(self, dim: int, heads: int, dim_mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim_mlp)
        self.linear2 = nn.Linear(dim_mlp, dim)
        self.temp_norm = nn.LayerNorm(dim)
        self.temp_attn = nn.MultiheadAttention(dim, heads)
        self.temp_ffn_norm = nn.LayerNorm(dim)
        self.temp_linear1 = nn.Linear(dim, dim_mlp)
        self.temp_linear2 = nn.Linear(dim_mlp, dim)

    def forward(self, tokens: torch.Tensor, position: torch.Tensor, num_frames: int) -> torch.Tensor:
        # tokens (D, B*F, C) sequence-first, frames inner; position (D, 1, C), the same for every frame
        d, bf, c = tokens.shape
        b = bf // num_frames

        # spatial attention, residual
        h = self.norm1(tokens)
        query_key = h + position
        tokens = tokens + self.self_attn(query_key, query_key, value=h)[0]
        # spatial feed-forward, residual
        tokens = tokens + self.linear2(F.gelu(self.linear1(self.norm2(tokens))))

        # temporal attention, residual: sequence = the F frames at one token, batch = (b, d); no temporal position
        frames = tokens.view(d, b, num_frames, c).permute(2, 1, 0, 3).reshape(num_frames, b * d, c)
        h = self.temp_norm(frames)
        query_key = h + position.transpose(0, 1).expand(b, d, c).reshape(1, b * d, c)
        frames = frames + self.temp_attn(query_key, query_key, value=h)[0]
        tokens = frames.view(num_frames, b, d, c).permute(2, 1, 0, 3).reshape(d, bf, c)
        # temporal feed-forward, residual
        return tokens + self.temp_linear2(F.gelu(self.temp_linear1(self.temp_ffn_norm(tokens))))


class FuseSftBlock(nn.Module):
    """Controllable feature transform: decoder features modulated by encoder features, `w * (dec*scale+shift) + dec`."""

    def __init__(self, channels: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                   nn.Conv2d(channels, channels, 3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                   nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return w * (dec_feat * self.scale(e) + self.shift(e)) + dec_feat


def adaptive_instance_normalization(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per sample and channel: content's mean/std replaced by style's (unbiased variance + eps, as official)."""

    def mean_std(x):
        flat = x.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    content_mean, content_std = mean_std(content)
    style_mean, style_std = mean_std(style)
    return (content - content_mean) / content_std * style_std + style_mean


@dataclass
class EncodedClip:
    """What the decoder needs besides the codes: the encoder's 16x16 features and its fusion taps (per frame)."""

    lq_feat: torch.Tensor  # (B*F, emb_dim, 16, 16)
    taps: dict[str, torch.Tensor]  # size -> (B*F, C, size, size)
    batch: int
    frames: int


class TemporalCodeFormer(nn.Module):
    """The network of `hallo2/net_g.pth`. `forward(x, w)` restores (B, F, 3, 512, 512) faces in [-1, 1]; `w` is the
    fidelity weight (0 = codebook only, the fusion is skipped; 1 = most faithful to the input)."""

    def __init__(self, config: TemporalCodeFormerConfig | None = None):
        super().__init__()
        self.config = config = config or TemporalCodeFormerConfig()
        self.encoder = Encoder(config)
        self.quantize = Codebook(config.codebook_size, config.emb_dim)
        self.generator = Generator(config)
        self.position_emb = nn.Parameter(torch.zeros(config.latent_size, config.dim_embd))
        self.feat_emb = nn.Linear(config.emb_dim, config.dim_embd)
        self.ft_layers = nn.Sequential(*[TemporalTransformerLayer(config.dim_embd, config.n_head, config.dim_mlp)
                                         for _ in range(config.n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(config.dim_embd),
                                            nn.Linear(config.dim_embd, config.codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict({size: FuseSftBlock(config.channels(size))
                                              for size in config.connect_list})

    def encode(self, x: torch.Tensor, frame_chunk: int | None = None) -> EncodedClip:
        """(B, F, 3, H, W) -> the 16x16 features and the fusion taps of every frame.

        `frame_chunk` runs the convolutions on that many frames at a time: they never mix frames, so this lowers
        peak memory and changes numbers only by float rounding (another batch size may pick another convolution
        kernel); None runs all B*F frames together, as official."""
        b, f = x.shape[:2]
        flat = x.reshape(b * f, *x.shape[2:])
        tap_blocks = {FUSE_ENCODER_BLOCK[size]: size for size in self.config.connect_list}
        chunks = []
        for start in range(0, b * f, frame_chunk or b * f):
            h, taps = flat[start:start + (frame_chunk or b * f)], {}
            for index, block in enumerate(self.encoder.blocks):
                h = block(h)
                if index in tap_blocks:
                    taps[tap_blocks[index]] = h
            chunks.append((h, taps))
        if len(chunks) == 1:
            return EncodedClip(lq_feat=chunks[0][0], taps=chunks[0][1], batch=b, frames=f)
        return EncodedClip(lq_feat=torch.cat([h for h, _ in chunks]),
                           taps={size: torch.cat([t[size] for _, t in chunks]) for size in chunks[0][1]},
                           batch=b, frames=f)

    def predict_logits(self, encoded: EncodedClip) -> torch.Tensor:
        """Code logits (B*F, 256, codebook_size) from the spatial-temporal transformer."""
        tokens = self.feat_emb(encoded.lq_feat.flatten(2).permute(2, 0, 1))  # (256, B*F, C)
        position = self.position_emb.unsqueeze(1)
        for layer in self.ft_layers:
            tokens = layer(tokens, position, encoded.frames)
        return self.idx_pred_layer(tokens).transpose(0, 1)

    def decode(self, codes: torch.Tensor, encoded: EncodedClip, w: float, adain: bool = True,
               frame_chunk: int | None = None) -> torch.Tensor:
        """Codes (B*F, 256) -> faces (B, F, 3, H, W): codebook lookup, AdaIN to the input's statistics, decoder with
        the fusion after the first block of each connected resolution when w > 0 (`frame_chunk` as in `encode`)."""
        side = self.config.latent_side
        quant = self.quantize.embedding.weight[codes.reshape(-1, side * side)]
        # contiguous NCHW as official: a channels-last view would send the convolutions down another kernel
        quant = quant.view(-1, side, side, self.config.emb_dim).permute(0, 3, 1, 2).contiguous()
        if adain:
            quant = adaptive_instance_normalization(quant, encoded.lq_feat)
        fuse_after = {FUSE_GENERATOR_BLOCK[size]: size for size in self.config.connect_list}
        total = quant.shape[0]
        outs = []
        for start in range(0, total, frame_chunk or total):
            stop = start + (frame_chunk or total)
            x = quant[start:stop]
            for index, block in enumerate(self.generator.blocks):
                x = block(x)
                if index in fuse_after and w > 0:
                    size = fuse_after[index]
                    x = self.fuse_convs_dict[size](encoded.taps[size][start:stop], x, w)
            outs.append(x)
        x = outs[0] if len(outs) == 1 else torch.cat(outs)
        return x.view(encoded.batch, encoded.frames, *x.shape[1:])

    def forward(self, x: torch.Tensor, w: float = 0.0, adain: bool = True, return_logits: bool = False,
                frame_chunk: int | None = None):
        """Faces (B, F, 3, H, W) in [-1, 1] -> restored faces, same shape, not clamped; with `return_logits`, also the
        code logits (B, F, 256, codebook_size) whose argmax picked the codes. `frame_chunk` bounds the frames the
        convolutions see at once (see `encode`; the transformer always sees the whole clip)."""
        encoded = self.encode(x, frame_chunk)
        logits = self.predict_logits(encoded)
        out = self.decode(logits.argmax(dim=-1), encoded, w, adain, frame_chunk)
        if return_logits:
            return out, logits.view(encoded.batch, encoded.frames, *logits.shape[1:])
        return out
