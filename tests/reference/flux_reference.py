"""PyTorch reference of the Flux.1 transformer in the original (BFL) checkpoint layout, with LoRA.

This is the oracle the C model is checked against: the same parameter names and shapes as a real
FLUX.1 checkpoint (`double_blocks.{i}.img_attn.qkv.weight`, `single_blocks.{i}.linear1.weight`,
...), the same math (adjacent-pair RoPE over (0, row, col) ids, cosine-first timestep embedding of
1000*t, per-head RMSNorm on q and k, final-layer modulation ordered (shift, scale)), written out by
hand so it runs on the CPU with Debian's python3-torch (1.13: no scaled_dot_product_attention).

LoRA follows the project's convention: y = x W^T + b + m * (alpha / rank) * (x A^T) B^T with
A [rank, in] and B [out, rank]; adapters are keyed by the module path of the Linear they adapt.
"""

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FluxParams:
    in_channels: int
    out_channels: int
    vec_in_dim: int
    context_in_dim: int
    hidden_size: int
    mlp_ratio: float
    num_heads: int
    depth: int
    depth_single_blocks: int
    axes_dim: list = field(default_factory=list)
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = True


class LoraLinear(nn.Module):
    """nn.Linear with any number of low-rank adapters added on top of the frozen base."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.base = nn.Linear(in_features, out_features, bias=bias, **FACTORY)
        self.adapters = []  # list of (A, B, multiplier * alpha / rank)

    def forward(self, x):
        y = self.base(x)
        for a, b, scale in self.adapters:
            y = y + scale * ((x @ a.t()) @ b.t())
        return y


# Factory arguments for every Linear; {"device": "meta"} builds full-size models without memory
# (used to list the real checkpoints' tensor names and shapes).
FACTORY = {}


def linear(in_features, out_features, bias=True):
    return LoraLinear(in_features, out_features, bias)


def timestep_embedding(t, dim, max_period=10000.0, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(t.dtype)  # computed in float32 as the original does, returned in t's dtype


def rope_table(ids, axes_dim, theta):
    """(cos, sin) per adjacent pair: [B, L, D/2] each, axes concatenated in order."""
    angles = []
    for axis, width in enumerate(axes_dim):
        exponent = torch.arange(0, width, 2, dtype=torch.float64) / width
        omega = 1.0 / (theta ** exponent)
        angles.append(ids[..., axis].double()[..., None] * omega)
    angle = torch.cat(angles, dim=-1)
    return torch.cos(angle).float(), torch.sin(angle).float()


def apply_rope(x, cos, sin):
    """x [B, H, L, D]; rotates pairs (2i, 2i+1) by the angle of pair i."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, None], sin[:, None]
    out = torch.stack([c * x0 - s * x1, s * x0 + c * x1], dim=-1)
    return out.flatten(-2)


def attention(q, k, v, cos, sin):
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    out = torch.softmax(scores, dim=-1) @ v
    b, h, l, d = out.shape
    return out.transpose(1, 2).reshape(b, l, h * d)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rrms = torch.rsqrt(torch.mean(x.float() ** 2, dim=-1, keepdim=True) + 1e-6)
        return (x.float() * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)


def layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def split_heads(qkv, heads):
    """[B, L, 3*H*D] -> three [B, H, L, D] (rows ordered q | k | v, head-major)."""
    b, l, width = qkv.shape
    d = width // (3 * heads)
    qkv = qkv.reshape(b, l, 3, heads, d).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, hidden):
        super().__init__()
        self.in_layer = linear(in_dim, hidden)
        self.out_layer = linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class Modulation(nn.Module):
    def __init__(self, dim, chunks):
        super().__init__()
        self.chunks = chunks
        self.lin = linear(dim, chunks * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.chunks, dim=-1)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.qkv = linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = linear(dim, dim)


class Mlp(nn.Sequential):
    def __init__(self, dim, hidden):
        super().__init__(linear(dim, hidden), nn.GELU(approximate="tanh"), linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    def __init__(self, p):
        super().__init__()
        h, mlp = p.hidden_size, int(p.hidden_size * p.mlp_ratio)
        self.heads = p.num_heads
        self.img_mod = Modulation(h, 6)
        self.img_attn = SelfAttention(h, p.num_heads, p.qkv_bias)
        self.img_mlp = Mlp(h, mlp)
        self.txt_mod = Modulation(h, 6)
        self.txt_attn = SelfAttention(h, p.num_heads, p.qkv_bias)
        self.txt_mlp = Mlp(h, mlp)

    def stream_qkv(self, x, mod, attn):
        shift, scale = mod[0], mod[1]
        q, k, v = split_heads(attn.qkv((1 + scale) * layer_norm(x) + shift), self.heads)
        return attn.norm.query_norm(q), attn.norm.key_norm(k), v

    def forward(self, img, txt, vec, cos, sin):
        img_mod, txt_mod = self.img_mod(vec), self.txt_mod(vec)
        iq, ik, iv = self.stream_qkv(img, img_mod, self.img_attn)
        tq, tk, tv = self.stream_qkv(txt, txt_mod, self.txt_attn)
        out = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), cos, sin)
        n_txt = txt.shape[1]
        txt_out, img_out = out[:, :n_txt], out[:, n_txt:]

        img = img + img_mod[2] * self.img_attn.proj(img_out)
        img = img + img_mod[5] * self.img_mlp((1 + img_mod[4]) * layer_norm(img) + img_mod[3])
        txt = txt + txt_mod[2] * self.txt_attn.proj(txt_out)
        txt = txt + txt_mod[5] * self.txt_mlp((1 + txt_mod[4]) * layer_norm(txt) + txt_mod[3])
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, p):
        super().__init__()
        h = p.hidden_size
        self.hidden, self.mlp, self.heads = h, int(h * p.mlp_ratio), p.num_heads
        self.linear1 = linear(h, 3 * h + self.mlp)
        self.linear2 = linear(h + self.mlp, h)
        self.norm = QKNorm(h // p.num_heads)
        self.modulation = Modulation(h, 3)

    def forward(self, x, vec, cos, sin):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1((1 + scale) * layer_norm(x) + shift), [3 * self.hidden, self.mlp], -1)
        q, k, v = split_heads(qkv, self.heads)
        out = attention(self.norm.query_norm(q), self.norm.key_norm(k), v, cos, sin)
        return x + gate * self.linear2(torch.cat((out, F.gelu(mlp, approximate="tanh")), 2))


class LastLayer(nn.Module):
    def __init__(self, h, out_channels):
        super().__init__()
        self.linear = linear(h, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), linear(h, 2 * h))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * layer_norm(x) + shift[:, None, :])


class Flux(nn.Module):
    def __init__(self, p):
        super().__init__()
        assert p.hidden_size % p.num_heads == 0 and sum(p.axes_dim) == p.hidden_size // p.num_heads
        self.params = p
        h = p.hidden_size
        self.img_in = linear(p.in_channels, h)
        self.time_in = MLPEmbedder(256, h)
        self.vector_in = MLPEmbedder(p.vec_in_dim, h)
        if p.guidance_embed:
            self.guidance_in = MLPEmbedder(256, h)
        self.txt_in = linear(p.context_in_dim, h)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(p) for _ in range(p.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(p) for _ in range(p.depth_single_blocks)])
        self.final_layer = LastLayer(h, p.out_channels)

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        if self.params.guidance_embed:
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        cos, sin = rope_table(torch.cat((txt_ids, img_ids), 1), self.params.axes_dim, self.params.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, cos, sin)
        x = torch.cat((txt, img), 1)
        for block in self.single_blocks:
            x = block(x, vec, cos, sin)
        return self.final_layer(x[:, txt.shape[1]:], vec)

    # ---- checkpoint-layout names -------------------------------------------------------------
    def linears(self):
        """(module path, LoraLinear) in the original checkpoint's naming."""
        for name, module in self.named_modules():
            if isinstance(module, LoraLinear):
                yield name, module

    def checkpoint_state(self):
        """Parameters under the original key names (the `.base` wrapper removed)."""
        return {k.replace(".base.", "."): v for k, v in self.state_dict().items()}

    def load_checkpoint_state(self, state):
        own = self.state_dict()
        for key in own:
            own[key].copy_(state[key.replace(".base.", ".")])


# ---- LoRA target sets ---------------------------------------------------------------------------
TARGET_SETS = {
    # every Linear inside the blocks: attention, MLP, single-block linears, modulation
    "all": r"^(double_blocks\.\d+\.(img|txt)_(attn\.(qkv|proj)|mlp\.[02]|mod\.lin)"
           r"|single_blocks\.\d+\.(linear1|linear2|modulation\.lin))$",
    "attention": r"^(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|single_blocks\.\d+\.linear1)$",
    "no_modulation": r"^(double_blocks\.\d+\.(img|txt)_(attn\.(qkv|proj)|mlp\.[02])"
                     r"|single_blocks\.\d+\.(linear1|linear2))$",
}


def lora_targets(model, pattern):
    regex = re.compile(TARGET_SETS.get(pattern, pattern))
    return [(name, m) for name, m in model.linears() if regex.search(name)]


def attach_lora(model, targets, rank, alpha, multiplier, generator, b_std=0.05):
    """Adds one adapter per target with random A and (non-zero, for testing) B; returns
    {module path: (A, B)} as leaf tensors requiring grad."""
    params = {}
    for name, module in targets:
        in_f, out_f = module.base.in_features, module.base.out_features
        a = (torch.randn(rank, in_f, generator=generator) / math.sqrt(in_f)).requires_grad_()
        b = (torch.randn(out_f, rank, generator=generator) * b_std).requires_grad_()
        module.adapters.append((a, b, multiplier * alpha / rank))
        params[name] = (a, b)
    return params


def kohya_name(module_path):
    return "lora_unet_" + module_path.replace(".", "_")


def flow_matching_loss(model, x0, noise, t, img_ids, txt, txt_ids, y, guidance=None):
    """Rectified flow: x_t = (1 - t) x0 + t noise, target noise - x0, mean squared error."""
    tt = t[:, None, None]
    xt = (1 - tt) * x0 + tt * noise
    pred = model(xt, img_ids, txt, txt_ids, t, y, guidance)
    return torch.mean((pred - (noise - x0)) ** 2)


def init_random_weights(model, generator):
    """Weights with std 1/sqrt(in) so activations stay O(1); biases and norm scales near their
    neutral values but not exactly, so every parameter's role is visible in the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p.shape[1]))
