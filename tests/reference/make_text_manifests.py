"""Writes the tensor manifests of the real FLUX.1 text encoders, as make_flux_manifests.py does for
the transformer: every tensor of the checkpoint with its shape, from the Hugging Face model built
at the published configuration on the meta device (no memory, no weights).

  tests/fixtures/clip-l-text.manifest.json   CLIP-L/14's text tower (FLUX.1 text_encoder/), keys
                                             "text_model.*" as in the FLUX.1 repositories' file
  tests/fixtures/t5xxl-encoder.manifest.json T5-XXL v1.1's encoder (FLUX.1 text_encoder_2/):
                                             shared.weight and encoder.*

Used by benchmarks/bench_pipeline_memory.c for the memory figures at real shapes.
Run:  build-venv/bin/python tests/reference/make_text_manifests.py   (transformers, torch)
"""

import json
import math
import os

import torch
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def write(name, doc, tensors):
    path = os.path.join(OUT, name)
    doc = dict(doc, parameters=sum(math.prod(s) for _, s in tensors))
    with open(path, "w") as f:  # one tensor a line, so diffs stay readable
        f.write(json.dumps(doc)[:-1] + ', "tensors": [\n')
        f.write(",\n".join(json.dumps(t) for t in tensors))
        f.write("\n]}\n")
    print(f"{path}: {len(tensors)} tensors, {doc['parameters'] / 1e6:.1f} M parameters")


def main():
    clip_cfg = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                    bos_token_id=0, pad_token_id=1, eos_token_id=2, projection_dim=768)
    t5_cfg = dict(vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
                  feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                  relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig(**clip_cfg))
        t5 = T5EncoderModel(T5Config(**t5_cfg))
    tensors = []
    for k, v in clip.state_dict().items():
        if "position_ids" in k:
            continue
        tensors.append([k if k.startswith("text_model.") else "text_model." + k, list(v.shape)])
    write("clip-l-text.manifest.json", {"model": "CLIP-L/14 text encoder (FLUX.1 text_encoder/)", "dtype": "BF16",
                                        "config": clip_cfg}, tensors)
    tensors = [[k, list(v.shape)] for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"]
    write("t5xxl-encoder.manifest.json", {"model": "T5-XXL v1.1 encoder (FLUX.1 text_encoder_2/)", "dtype": "BF16",
                                          "config": t5_cfg}, tensors)


if __name__ == "__main__":
    main()
