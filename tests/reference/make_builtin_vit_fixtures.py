"""Writes the built-in encoder's golden fixtures under tests/fixtures/builtin_vit/.

A tiny random model (16 px images, patch 4, dim 24, 2 blocks of 3 heads, MLP 40, projection head
32 -> 12), every parameter drawn at a scale that makes each one matter (LayerNorm weights around
1, biases and positions non-zero), runs in float64 through builtin_vit_reference.py.

  tiny.safetensors     the weights in the file layout (F32, metadata format/image_size/heads)
  tiny_io.safetensors  images [5, 16, 16, 3] in [0, 1]; embeddings = the CLS rows [5, 24];
                       projections = the head's output [5, 12]. Stored as F32; computed in
                       float64 from the same F32 values.

Needs torch (Debian python3-torch 1.13). CI never runs this.
Run:  /usr/bin/python3 tests/reference/make_builtin_vit_fixtures.py
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import builtin_vit_reference as ref  # noqa: E402
import st_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "builtin_vit")


def main():
    torch.manual_seed(1234)
    cfg = dict(image_size=16, patch=4, dim=24, depth=2, heads=3, mlp=40, head_hidden=32, head_out=12)
    m = ref.BuiltinViT(**cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif p.dim() == 1 or name in ("cls_token", "pos_embed"):
                p.copy_(0.2 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
    tensors = {n: p.detach().float() for n, p in m.named_parameters()}
    os.makedirs(OUT, exist_ok=True)
    st_io.save(os.path.join(OUT, "tiny.safetensors"), tensors,
               {"format": "flashlora-builtin-vit", "image_size": 16, "patch_size": 4, "dim": 24, "depth": 2, "heads": 3})
    m = m.double()
    with torch.no_grad():  # the stored F32 values, in float64
        for n, p in m.named_parameters():
            p.copy_(tensors[n].double())
    g = torch.Generator().manual_seed(99)
    images = torch.rand(5, 16, 16, 3, generator=g).float()
    with torch.no_grad():
        emb = m.embed(images.double())
        proj = m.project(images.double())
    st_io.save(os.path.join(OUT, "tiny_io.safetensors"),
               {"images": images, "embeddings": emb.float(), "projections": proj.float()})
    print("embeddings", emb.shape, "projections", proj.shape)


if __name__ == "__main__":
    main()
