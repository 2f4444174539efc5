"""Writes the tensor manifests of the real text encoders of FLUX.1 (tests/fixtures/text/):

  clip-l.manifest.json   CLIP-L/14's text tower (FLUX text_encoder/, ComfyUI clip_l.safetensors)
  t5-xxl.manifest.json   T5-XXL v1.1's encoder (FLUX text_encoder_2/, ComfyUI t5xxl_fp16.safetensors)

Names and shapes come from the Hugging Face models themselves: each is instantiated at the real
width with one layer (the per-layer names and shapes do not depend on the depth), and the layer-0
entries are repeated for every layer. No weights are read. The C tests check that the manifests bind
and give the memory figures.

  build-venv/bin/python tests/reference/make_text_manifests.py
"""

import json
import math
import os
import re

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "text")


def expand(state, layers, pattern):
    out = []
    for name, t in state.items():
        m = re.match(pattern, name)
        if m and m.group(1) == "0":
            for i in range(layers):
                if "relative_attention_bias" in name and i > 0:
                    continue
                out.append([name.replace(f"{m.group(0)}", m.group(0).replace(".0.", f".{i}.")), list(t.shape)])
        elif not m:
            out.append([name, list(t.shape)])
    return out


def write(path, model, params, tensors):
    total = sum(math.prod(s) for _, s in tensors)
    head = {"model": model, "dtype": "BF16", "params": params, "parameters": total}
    with open(path, "w") as f:
        f.write(json.dumps(head)[:-1] + ', "tensors": [\n' + ",\n".join(json.dumps(t) for t in tensors) + "\n]}\n")
    print(f"{path}: {len(tensors)} tensors, {total} parameters")


def main():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel
    torch.set_default_dtype(torch.float32)
    clip = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    one = CLIPTextModel(CLIPTextConfig(**{**clip, "num_hidden_layers": 1}))
    state = {k: v for k, v in one.state_dict().items() if v.is_floating_point()}
    order = []
    for name, shape in expand(state, 12, r"^text_model\.encoder\.layers\.(\d+)\."):
        order.append([name, shape])
    layer_first = [t for t in order if ".layers." not in t[0] and "final" not in t[0]]
    layers = sorted([t for t in order if ".layers." in t[0]], key=lambda t: int(t[0].split(".")[3]))
    final = [t for t in order if "final" in t[0]]
    write(os.path.join(OUT, "clip-l.manifest.json"), "CLIP-L/14 text encoder", clip, layer_first + layers + final)

    t5 = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6)
    # one block at the real width: ~0.9 GB of f32 for a moment
    one = T5EncoderModel(T5Config(**{**t5, "num_layers": 1}))
    state = {k: v for k, v in one.state_dict().items() if k != "encoder.embed_tokens.weight"}
    tensors = expand(state, 24, r"^encoder\.block\.(\d+)\.")
    blocks = sorted([t for t in tensors if t[0].startswith("encoder.block.")], key=lambda t: int(t[0].split(".")[2]))
    rest = [t for t in tensors if not t[0].startswith("encoder.block.")]
    write(os.path.join(OUT, "t5-xxl.manifest.json"), "T5-XXL v1.1 encoder", t5,
          [t for t in rest if t[0] == "shared.weight"] + blocks + [t for t in rest if t[0] != "shared.weight"])


if __name__ == "__main__":
    main()
