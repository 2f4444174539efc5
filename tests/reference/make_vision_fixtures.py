"""Writes the image encoders' golden fixtures (tests/fixtures/vision/) from the Hugging Face models
and image processors, run in float64 on weights rounded to float32 (the C side, in fp32, then
differs only by its own rounding):

  dinov2_tiny/          a tiny Dinov2Model (hidden 32, 2 layers, 2 heads, patch 14, native 266 =
                        a 19x19 grid, random LayerScale) saved as config.json + model.safetensors
  dinov2_swiglu_tiny/   the same with the SwiGLU MLP (1 layer)
  clip_tiny/            a tiny full CLIPModel (vision: hidden 32, 2 layers, patch 14 at 224; text:
                        the 814-id tokenizer of tests/fixtures/text/tiny-flux; projections to 16)
                        with that tokenizer's vocab.json and merges.txt beside it
  vision_golden.safetensors
      inputs are pattern(size, seed) below (exact in float32; the C test computes the same)
      dinov2_cls_native, dinov2_hidden_native: the network at its native grid (266, seed 1);
          dinov2_cls_224, dinov2_hidden_224: at 224 (seed 2; 16x16 grid, position table
          resized); dinov2_pos_224: that resized patch table [256, 32]
      swiglu_cls: the SwiGLU model at 224 (seed 3)
      clip_image_embeds, clip_hidden (encoder output before post_layernorm): 224, seed 4
      clip_text_ids_K, clip_text_embeds_K for the prompts of PROMPTS (HF tokenizer ids, no padding)
      img_K_dinov2, img_K_clip: the processors + models end to end (L2-normalized) on the images of
          tests/fixtures/vision/images (BitImageProcessor 256/224 ImageNet for DINOv2,
          CLIPImageProcessor 224 for CLIP; an image already 224x224 only normalized)
      resize_src [23,37,3] and resize_WxH: PIL's bicubic resize of it (8-bit) to several sizes

  build-venv/bin/python tests/reference/make_vision_fixtures.py
"""

import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "vision")
TOKENIZER = os.path.join(HERE, "..", "fixtures", "text", "tiny-flux", "tokenizer")
PROMPTS = ["a photo of sks dog", "an illustration of the sks logo on a mug", ""]
RESIZES = [(64, 48), (13, 9), (37, 50), (20, 23), (37, 23), (5, 100)]


def perturb(model):
    """Larger than the default init so every part matters; weights rounded to float32."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "lambda1" in name:
                p.copy_(0.5 + 0.5 * torch.rand_like(p))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)
            else:
                p.copy_(torch.randn_like(p))
            p.copy_(p.float().double())
    return model


def pattern(size, seed):
    """A deterministic input [1, 3, size, size] both sides compute exactly (small integers / 50)."""
    c = torch.arange(3).view(3, 1, 1)
    y = torch.arange(size).view(1, size, 1)
    x = torch.arange(size).view(1, 1, size)
    v = (x * x * 7 + y * 13 + x * y * 3 + c * 29 + seed * 31 + (y * y * 5) % 17) % 101
    return (v.double() / 50.0 - 1.0).unsqueeze(0)


def save_model(model, cfg, folder, skip=()):
    os.makedirs(folder, exist_ok=True)
    sd = {k: v.float() for k, v in model.state_dict().items() if v.is_floating_point() and k not in skip}
    st_io.save(os.path.join(folder, "model.safetensors"), sd, {"format": "pt"})
    d = cfg.to_dict()
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(d, f, indent=1, sort_keys=True)


def dinov2(out):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(11)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                       image_size=266, layer_norm_eps=1e-6, hidden_act="gelu")
    model = perturb(Dinov2Model(cfg).double().eval())
    save_model(model, cfg, os.path.join(OUT, "dinov2_tiny"), skip=("embeddings.mask_token",))
    for tag, size, seed in (("native", 266, 1), ("224", 224, 2)):
        px = pattern(size, seed)
        with torch.no_grad():
            r = model(pixel_values=px)
        out[f"dinov2_cls_{tag}"] = r.pooler_output[0].float()
        out[f"dinov2_hidden_{tag}"] = r.last_hidden_state[0].float()
    with torch.no_grad():
        emb = model.embeddings
        dummy = torch.zeros(1, 1 + 16 * 16, 32, dtype=torch.float64)
        pos = emb.interpolate_pos_encoding(dummy, 224, 224)
    out["dinov2_pos_224"] = pos[0, 1:].float()
    return model


def dinov2_swiglu(out):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(13)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, mlp_ratio=4, patch_size=14,
                       image_size=98, layer_norm_eps=1e-6, use_swiglu_ffn=True)
    model = perturb(Dinov2Model(cfg).double().eval())
    save_model(model, cfg, os.path.join(OUT, "dinov2_swiglu_tiny"), skip=("embeddings.mask_token",))
    px = pattern(224, 3)
    with torch.no_grad():
        r = model(pixel_values=px)
    out["swiglu_cls"] = r.pooler_output[0].float()


def clip(out):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    tok = CLIPTokenizer(os.path.join(TOKENIZER, "vocab.json"), os.path.join(TOKENIZER, "merges.txt"))
    vocab = len(tok)
    torch.manual_seed(21)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=2, bos_token_id=0, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        projection_dim=16)
    model = perturb(CLIPModel(cfg).double().eval())
    folder = os.path.join(OUT, "clip_tiny")
    save_model(model, cfg, folder)
    for f in ("vocab.json", "merges.txt"):
        with open(os.path.join(TOKENIZER, f), "rb") as src, open(os.path.join(folder, f), "wb") as dst:
            dst.write(src.read())
    px = pattern(224, 4)
    with torch.no_grad():
        vis = model.vision_model(pixel_values=px)
        feats = model.get_image_features(pixel_values=px)
    out["clip_image_embeds"] = feats[0].float()
    out["clip_hidden"] = vis.last_hidden_state[0].float()
    for k, prompt in enumerate(PROMPTS):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            t = model.get_text_features(input_ids=ids)
        out[f"clip_text_ids_{k}"] = ids[0].float()
        out[f"clip_text_embeds_{k}"] = t[0].float()
    return model


def end_to_end(out, dino, clipm):
    from transformers import BitImageProcessor, CLIPImageProcessor
    dino_pp = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    clip_pp = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    folder = os.path.join(OUT, "images")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    for k, name in enumerate(names):
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        native = img.size == (224, 224)
        # an image already at the input size is only normalized, never resampled
        dp = dino_pp(img, return_tensors="pt", do_resize=not native, do_center_crop=not native).pixel_values
        cp = clip_pp(img, return_tensors="pt").pixel_values
        with torch.no_grad():
            d = dino(pixel_values=dp.double()).pooler_output[0]
            c = clipm.get_image_features(pixel_values=cp.double())[0]
        out[f"img_{k}_dinov2"] = (d / d.norm()).float()
        out[f"img_{k}_clip"] = (c / c.norm()).float()


def make_images():
    """Small test photos: crops of scikit-image's public-domain samples, one already 224x224."""
    from skimage import data
    folder = os.path.join(OUT, "images")
    os.makedirs(folder, exist_ok=True)
    cat = Image.fromarray(data.chelsea())                      # 451x300
    Image.fromarray(np.asarray(cat)[60:180, 100:280]).save(os.path.join(folder, "a_cat_180x120.png"))
    coffee = Image.fromarray(data.coffee()).resize((150, 100), Image.BILINEAR)
    coffee.save(os.path.join(folder, "b_coffee_150x100.png"))
    rocket = Image.fromarray(data.rocket())                    # 427x640
    Image.fromarray(np.asarray(rocket)[100:324, 100:324]).save(os.path.join(folder, "c_rocket_224x224.png"))
    astro = Image.fromarray(data.astronaut()).resize((90, 190), Image.BILINEAR)
    astro.save(os.path.join(folder, "d_astronaut_90x190.png"))


def resizes(out):
    g = np.random.default_rng(5)
    src = g.integers(0, 256, size=(23, 37, 3), dtype=np.uint8)
    src[::5] = 255  # hard edges, so overshoot is clamped
    src[:, ::7] = 0
    out["resize_src"] = torch.from_numpy(src.astype(np.float32))
    img = Image.fromarray(src)
    for w, h in RESIZES:
        r = np.asarray(img.resize((w, h), Image.BICUBIC))
        out[f"resize_{w}x{h}"] = torch.from_numpy(r.astype(np.float32))


def main():
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    out = {}
    make_images()
    dino = dinov2(out)
    dinov2_swiglu(out)
    clipm = clip(out)
    end_to_end(out, dino, clipm)
    resizes(out)
    st_io.save(os.path.join(OUT, "vision_golden.safetensors"), out, {"about": "image encoder goldens"})


if __name__ == "__main__":
    main()
