"""A hand-written PyTorch reference of the FLUX.1 autoencoder (BFL flux/modules/autoencoder.py).

The same modules, parameter names and arithmetic as BFL's AutoEncoder: ResnetBlock (GroupNorm 32
groups eps 1e-6 -> swish -> conv3x3, twice, plus the input through a 1x1 nin_shortcut when the
width changes), Downsample (zero pad right and bottom by one, conv3x3 stride 2), Upsample (nearest
2x, conv3x3), the mid-block AttnBlock (GroupNorm, 1x1 q/k/v, single-head attention over the h*w
positions with scale 1/sqrt(C), 1x1 proj_out, residual). The one change: attention is written out
as an explicit softmax instead of scaled_dot_product_attention (absent from torch 1.13).
encode() returns the mean of the diagonal Gaussian, scaled and shifted; decode() undoes the scale
and shift first. pack()/unpack() are Flux's 2x2 latent packing.

Used by make_ae_fixtures.py (float64) and, through checkpoint names, by the manifest writer.
"""

import math
from dataclasses import dataclass, field

import torch
from torch import nn

FACTORY = {}  # extra keyword arguments for every parameterised layer (e.g. device="meta")


@dataclass
class AutoEncoderParams:
    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: list = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159


def swish(x):
    return x * torch.sigmoid(x)


def group_norm(channels):
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True, **FACTORY)


def conv(cin, cout, k, stride=1, padding=0):
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding, **FACTORY)


class AttnBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = conv(channels, channels, 1)
        self.k = conv(channels, channels, 1)
        self.v = conv(channels, channels, 1)
        self.proj_out = conv(channels, channels, 1)

    def attention(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).transpose(1, 2)  # "b c h w -> b 1 (h w) c", one head
        k = k.reshape(b, c, hh * ww).transpose(1, 2)
        v = v.reshape(b, c, hh * ww).transpose(1, 2)
        scores = q @ k.transpose(1, 2) / math.sqrt(c)
        p = torch.softmax(scores, dim=-1)
        o = p @ v
        return o.transpose(1, 2).reshape(b, c, hh, ww)

    def forward(self, x):
        return x + self.proj_out(self.attention(x))


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm1 = group_norm(cin)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = conv(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


class Downsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = conv(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = conv(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.num_resolutions = len(p.ch_mult)
        self.num_res_blocks = p.num_res_blocks
        self.conv_in = conv(p.in_channels, p.ch, 3, padding=1)
        in_ch_mult = (1,) + tuple(p.ch_mult)
        self.down = nn.ModuleList()
        block_in = p.ch
        for i in range(self.num_resolutions):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_in = p.ch * in_ch_mult[i]
            block_out = p.ch * p.ch_mult[i]
            for _ in range(p.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if i != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.norm_out = group_norm(block_in)
        self.conv_out = conv(block_in, 2 * p.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for i in range(self.num_resolutions):
            for j in range(self.num_res_blocks):
                h = self.down[i].block[j](h)
            if i != self.num_resolutions - 1:
                h = self.down[i].downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.num_resolutions = len(p.ch_mult)
        self.num_res_blocks = p.num_res_blocks
        block_in = p.ch * p.ch_mult[-1]
        self.conv_in = conv(p.z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in)
        self.up = nn.ModuleList()
        for i in reversed(range(self.num_resolutions)):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = p.ch * p.ch_mult[i]
            for _ in range(p.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out))
                block_in = block_out
            if i != 0:
                level.upsample = Upsample(block_in)
            self.up.insert(0, level)
        self.norm_out = group_norm(block_in)
        self.conv_out = conv(block_in, p.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(self.num_resolutions)):
            for j in range(self.num_res_blocks + 1):
                h = self.up[i].block[j](h)
            if i != 0:
                h = self.up[i].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class AutoEncoder(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.params = p
        self.encoder = Encoder(p)
        self.decoder = Decoder(p)
        self.scale_factor = p.scale_factor
        self.shift_factor = p.shift_factor

    def encode(self, x):
        moments = self.encoder(x)
        mean = moments[:, : self.params.z_channels]  # DiagonalGaussian(sample=False): the mean
        return self.scale_factor * (mean - self.shift_factor)

    def decode(self, z):
        return self.decoder(z / self.scale_factor + self.shift_factor)


def pack(latents):
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: "b c (h ph) (w pw) -> b (h w) (c ph pw)"."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens, h, w):
    b, n, c4 = tokens.shape
    c = c4 // 4
    x = tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


# ---- diffusers AutoencoderKL names (written independently of the C mapping) --------------------

def bfl_to_diffusers(name, n_levels):
    """The diffusers AutoencoderKL key of a BFL key, and whether the tensor becomes a Linear."""
    parts = name.split(".")
    half, rest = parts[0], parts[1:]
    linear = False
    if rest[0] in ("down", "up"):
        level = int(rest[1])
        blocks = "down_blocks" if rest[0] == "down" else "up_blocks"
        idx = level if rest[0] == "down" else n_levels - 1 - level
        if rest[2] == "block":
            tail = ["resnets", rest[3]] + rest[4:]
        elif rest[2] == "downsample":
            tail = ["downsamplers", "0"] + rest[3:]
        else:
            tail = ["upsamplers", "0"] + rest[3:]
        rest = [blocks, str(idx)] + tail
    elif rest[0] == "mid":
        if rest[1] in ("block_1", "block_2"):
            rest = ["mid_block", "resnets", "0" if rest[1] == "block_1" else "1"] + rest[2:]
        else:
            sub = {"norm": ["group_norm"], "q": ["to_q"], "k": ["to_k"], "v": ["to_v"], "proj_out": ["to_out", "0"]}
            linear = rest[2] != "norm" and rest[3] == "weight"
            rest = ["mid_block", "attentions", "0"] + sub[rest[2]] + rest[3:]
    elif rest[0] == "norm_out":
        rest = ["conv_norm_out"] + rest[1:]
    rest = ["conv_shortcut" if r == "nin_shortcut" else r for r in rest]
    return ".".join([half] + rest), linear


def to_diffusers_state(state, n_levels):
    out = {}
    for name, t in state.items():
        key, linear = bfl_to_diffusers(name, n_levels)
        out[key] = t.reshape(t.shape[0], t.shape[1]) if linear else t
    return out
