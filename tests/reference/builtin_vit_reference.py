"""PyTorch reference of flashlora's built-in image encoder (models/builtin_vit.h).

A pre-norm ViT written with torch's own modules: Conv2d patch embedding over 2x - 1 pixels,
[CLS; patches] + learned positions, blocks of LayerNorm -> fused qkv attention -> proj and
LayerNorm -> fc1 -> GELU (tanh) -> fc2 with residuals, a final LayerNorm whose CLS row is the
embedding, and the projection head (fc1 -> GELU (tanh) -> fc2) used in training. Parameter names
are the file layout's.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, mlp)
        self.mlp.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        x = x + self.attn.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x)), approximate="tanh"))


class BuiltinViT(nn.Module):
    def __init__(self, image_size, patch, dim, depth, heads, mlp, head_hidden=0, head_out=0):
        super().__init__()
        grid = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = None
        if head_hidden:
            self.head = nn.Module()
            self.head.fc1 = nn.Linear(dim, head_hidden)
            self.head.fc2 = nn.Linear(head_hidden, head_out)

    def embed(self, images):
        """images: [B, S, S, 3] in [0, 1] -> the CLS row after the final norm [B, D]."""
        x = images.permute(0, 3, 1, 2) * 2 - 1
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]

    def project(self, images):
        return self.head.fc2(F.gelu(self.head.fc1(self.embed(images)), approximate="tanh"))
