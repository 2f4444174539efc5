"""Writes tiny random FLUX.1 pipelines in the layouts users have, and what diffusers' FluxPipeline
makes of them, for the end-to-end parity tests (tests/models/test_pipeline_cli.c).

  tests/fixtures/pipeline/dev/       the diffusers form of a guidance-distilled (dev-like) model:
                                     model_index.json, scheduler/, transformer/ (sharded, BF16),
                                     vae/ (F16), text_encoder/ (CLIP, F16), text_encoder_2/ (T5,
                                     sharded, BF16); no tokenizer folders (the built-in
                                     vocabularies are the real CLIP and T5 ones)
  tests/fixtures/pipeline/schnell/   the BFL single files of a no-guidance (schnell-like) model:
                                     flux1-schnell.safetensors (BF16, with its flux_params) and
                                     ae.safetensors (F16: the dev folder's autoencoder in the BFL
                                     layout); its text encoders are the dev folder's
  tests/fixtures/pipeline/{dev,schnell}.noise.safetensors     "latents": the initial noise (dev:
                                     packed [1, 12, 64]; schnell: planar [1, 16, 6, 8])
  tests/fixtures/pipeline/{dev,schnell}.expected.safetensors  "image" [1, 3, 48, 64] in [-1, 1]
                                     (diffusers' output_type="pt" image, x * 2 - 1) and "latents"
                                     (the final packed latents), computed in float64

The prompt, size (64 x 48), steps (3) and guidance (3.5 for dev; none for schnell) are in the
expected files' metadata. The tokenizers are the real FLUX.1 ones, rebuilt from their public
sources (open-clip-torch 3.3.0's bpe_simple_vocab_16e6.txt.gz for CLIP; the T5 tokenizer.json in
stable-diffusion-cpp-python 0.4.7's sources), whose sha256 are checked. Weights are random (seeded)
with real key names; the widths are tiny (CLIP hidden 4, T5 d_model 4) but the vocabularies full.

Run on a developer machine (CI only reads the fixtures):
  python3 -m venv --system-site-packages build-venv
  build-venv/bin/pip install torch diffusers transformers tokenizers safetensors numpy
  build-venv/bin/pip download --no-deps open-clip-torch==3.3.0 -d SOURCES
  build-venv/bin/pip install scikit-build-core
  build-venv/bin/pip download --no-deps --no-binary :all: --no-build-isolation \
      stable-diffusion-cpp-python==0.4.7 -d SOURCES
  build-venv/bin/python tests/reference/make_pipeline_fixtures.py SOURCES
Made with torch 2.15.0, diffusers 0.42.1, transformers 5.24.0, tokenizers 0.23.3, numpy 2.4.6.
"""

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "pipeline")
PROMPT = "A mug with the sks logo, studio lighting"
WIDTH, HEIGHT, STEPS, GUIDANCE = 64, 48, 3, 3.5

CLIP_WHEEL_SHA = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
CLIP_MERGES_SHA = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SDCPP_SDIST_SHA = "998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282"
T5_JSON_SHA = "fe2ebbbbde2985be723e0ce18217853e4020c5e9d35bd07be2c27ab9d3ead57a"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def checked(data, want, what):
    got = sha256(data)
    if got != want:
        sys.exit(f"{what}: sha256 {got}, expected {want}")
    return data


# ---- tokenizers -----------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_tokenizer(sources):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    wheel = checked(open(os.path.join(sources, "open_clip_torch-3.3.0-py3-none-any.whl"), "rb").read(), CLIP_WHEEL_SHA,
                    "open-clip-torch wheel")
    gz = checked(zipfile.ZipFile(io.BytesIO(wheel)).read("open_clip/bpe_simple_vocab_16e6.txt.gz"), CLIP_MERGES_SHA,
                 "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(gz).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tok = Tokenizer(models.BPE({v: i for i, v in enumerate(vocab)}, merges, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", 49407), ("<|startoftext|>", 49406),
                                                      add_prefix_space=False, trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77)
    ids = fast("a photo of a cat")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407], ids
    return fast


def t5_tokenizer(sources):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    sdist = os.path.join(sources, "stable_diffusion_cpp_python-0.4.7.tar.gz")
    checked(open(sdist, "rb").read(), SDCPP_SDIST_SHA, "stable-diffusion-cpp-python sdist")
    member = "stable_diffusion_cpp_python-0.4.7/vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp"
    with tarfile.open(sdist) as tar:
        text = tar.extractfile(member).read().decode("ascii")
    start = text.index("t5_tokenizer_json_str")
    body = text[text.index("{", start) + 1:text.index("}", start)]
    data = checked(bytes(int(h, 16) for h in re.findall(r"0x([0-9a-fA-F]{2})", body)), T5_JSON_SHA, "T5 tokenizer.json")
    tok = Tokenizer.from_str(data.decode("utf-8"))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                                   model_max_length=512)
    ids = fast("a photo of sks dog")["input_ids"]
    assert ids == [3, 9, 1202, 13, 3, 7, 157, 7, 1782, 1], ids
    return fast


# ---- models ----------------------------------------------------------------------------------------

def make_models(dev):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(1234)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                                        layer_norm_eps=1e-5, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                                        projection_dim=4))
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4, d_kv=2, num_heads=2, d_ff=8, num_layers=2,
                                 feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                                 relative_attention_max_distance=128, layer_norm_epsilon=1e-6, dropout_rate=0.0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 32, 32),
                        layers_per_block=1, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=True, scaling_factor=0.3611,
                        shift_factor=0.1159, sample_size=64)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=4,
                                         pooled_projection_dim=4, guidance_embeds=dev, axes_dims_rope=(4, 6, 6))
    # A little noise on top of the transformer's initialization, so no layer is near the identity.
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return clip, t5, vae, transformer


def scheduler_config(dev):
    cfg = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
           "use_dynamic_shifting": dev}
    if dev:
        cfg.update({"shift": 3.0, "base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
                    "max_shift": 1.15})
    return cfg


# ---- the BFL layouts (facts from the FLUX.1 checkpoints; see the notes on the pipeline) -------------

def transformer_to_bfl(sd):
    out = {}
    double = {"norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin", "attn.to_out.0": "img_attn.proj",
              "attn.to_add_out": "txt_attn.proj", "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
              "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
              "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
              "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale"}
    single = {"norm.linear": "modulation.lin", "proj_out": "linear2", "attn.norm_q.weight": "norm.query_norm.scale",
              "attn.norm_k.weight": "norm.key_norm.scale"}
    top = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
           "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
           "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
           "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
           "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
           "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
           "time_text_embed.text_embedder.linear_2": "vector_in.out_layer"}
    used = set()

    def take(name):
        used.add(name)
        return sd[name]

    n_double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    n_single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    for leaf in ("weight", "bias"):
        for i in range(n_double):
            d = f"transformer_blocks.{i}."
            out[f"double_blocks.{i}.img_attn.qkv.{leaf}"] = torch.cat([take(d + f"attn.to_{x}.{leaf}") for x in "qkv"])
            out[f"double_blocks.{i}.txt_attn.qkv.{leaf}"] = torch.cat(
                [take(d + f"attn.add_{x}_proj.{leaf}") for x in "qkv"])
            for k, v in double.items():
                if k.endswith(".weight") and leaf == "bias":
                    continue
                src = d + (k if k.endswith(".weight") else f"{k}.{leaf}")
                out[f"double_blocks.{i}.{v}" + ("" if k.endswith(".weight") else f".{leaf}")] = take(src)
        for i in range(n_single):
            s = f"single_transformer_blocks.{i}."
            out[f"single_blocks.{i}.linear1.{leaf}"] = torch.cat(
                [take(s + f"attn.to_{x}.{leaf}") for x in "qkv"] + [take(s + f"proj_mlp.{leaf}")])
            for k, v in single.items():
                if k.endswith(".weight") and leaf == "bias":
                    continue
                src = s + (k if k.endswith(".weight") else f"{k}.{leaf}")
                out[f"single_blocks.{i}.{v}" + ("" if k.endswith(".weight") else f".{leaf}")] = take(src)
        for k, v in top.items():
            if f"{k}.{leaf}" in sd:
                out[f"{v}.{leaf}"] = take(f"{k}.{leaf}")
        shift_scale = take(f"norm_out.linear.{leaf}")
        scale, shift = shift_scale.chunk(2)
        out[f"final_layer.adaLN_modulation.1.{leaf}"] = torch.cat([shift, scale])
    missing = set(sd) - used
    assert not missing, missing
    return out


def vae_to_bfl(sd, n_levels=4):
    out = {}
    for name, t in sd.items():
        n = name
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", n)
        n = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.", r"encoder.down.\1.downsample.conv.", n)
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(.*)$", n)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            rest = re.sub(r"^resnets\.(\d+)\.", r"block.\1.", rest)
            rest = rest.replace("upsamplers.0.conv.", "upsample.conv.")
            n = f"decoder.up.{n_levels - 1 - i}.{rest}"
        n = re.sub(r"\.mid_block\.resnets\.0\.", ".mid.block_1.", n)
        n = re.sub(r"\.mid_block\.resnets\.1\.", ".mid.block_2.", n)
        for d, b in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
            n = n.replace(f".mid_block.attentions.0.{d}.", f".mid.attn_1.{b}.")
        n = n.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
        if ".mid.attn_1." in n and n.endswith(".weight") and t.dim() == 2:
            t = t[:, :, None, None]
        out[n] = t
    return out


# ---- the reference ----------------------------------------------------------------------------------

def pack(latents):
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def run_reference(dirs, dev, clip_tok, t5_tok, noise_packed):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    f64 = torch.float64
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(dev)),
        vae=AutoencoderKL.from_pretrained(dirs["vae"], torch_dtype=f64),
        text_encoder=CLIPTextModel.from_pretrained(dirs["text_encoder"], torch_dtype=f64),
        tokenizer=clip_tok,
        text_encoder_2=T5EncoderModel.from_pretrained(dirs["text_encoder_2"], torch_dtype=f64),
        tokenizer_2=t5_tok,
        transformer=FluxTransformer2DModel.from_pretrained(dirs["transformer"], torch_dtype=f64))
    for name, module in (("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
        stored = {}
        for fn in os.listdir(dirs[name]):
            if fn.endswith(".safetensors"):
                from safetensors.torch import load_file
                stored.update(load_file(os.path.join(dirs[name], fn)))
        got = {k.removeprefix("text_model."): v for k, v in module.state_dict().items()}
        for k, v in stored.items():
            k2 = k.removeprefix("text_model.")
            if k2 in got:
                assert torch.equal(got[k2], v.to(torch.float64)), f"{name}: {k} did not load"
        assert len(stored) >= len([k for k in got if "position_ids" not in k]) - 1, f"{name}: keys missing"
    final = {}

    def keep(_pipe, _i, _t, kwargs):
        final["latents"] = kwargs["latents"].clone()
        return kwargs

    out = pipe(prompt=PROMPT, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
               guidance_scale=GUIDANCE if dev else 0.0, latents=noise_packed.to(f64), output_type="pt",
               max_sequence_length=512 if dev else 256, callback_on_step_end=keep,
               callback_on_step_end_tensor_inputs=["latents"])
    image = out.images.to(torch.float64) * 2 - 1
    return image.float().contiguous(), final["latents"].float().contiguous()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sources = sys.argv[1]
    clip_tok, t5_tok = clip_tokenizer(sources), t5_tokenizer(sources)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    tmp = tempfile.mkdtemp()
    dev_clip = dev_t5 = dev_vae = None
    for variant in ("dev", "schnell"):
        dev = variant == "dev"
        clip, t5, vae, transformer = make_models(dev)
        if dev:
            dev_clip, dev_t5, dev_vae = clip, t5, vae
        else:  # schnell shares the dev folder's text encoders and autoencoder
            clip, t5, vae = dev_clip, dev_t5, dev_vae
        root = os.path.join(OUT, variant) if dev else os.path.join(tmp, "schnell")
        dirs = {k: os.path.join(root, k) for k in ("transformer", "vae", "text_encoder", "text_encoder_2", "scheduler")}
        transformer.to(torch.bfloat16).save_pretrained(dirs["transformer"], max_shard_size="100KB")
        vae.to(torch.float16).save_pretrained(dirs["vae"])
        clip.to(torch.float16).save_pretrained(dirs["text_encoder"])
        # The FLUX.1 repositories' text_encoder/ keys start with "text_model." (transformers 4.x
        # wrote them so); newer transformers drops the prefix: put it back, as users' files have it.
        clip_file = os.path.join(dirs["text_encoder"], "model.safetensors")
        from safetensors.torch import load_file
        sd = load_file(clip_file)
        save_file({(k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
                   for k, v in sd.items()}, clip_file, metadata={"format": "pt"})
        t5.to(torch.bfloat16).save_pretrained(dirs["text_encoder_2"], max_shard_size="100KB")
        os.makedirs(dirs["scheduler"], exist_ok=True)
        with open(os.path.join(dirs["scheduler"], "scheduler_config.json"), "w") as f:
            json.dump(scheduler_config(dev), f, indent=2)
        with open(os.path.join(root, "model_index.json"), "w") as f:
            json.dump({"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                       "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers",
                                                                                             "T5EncoderModel"],
                       "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers",
                                                                                       "T5TokenizerFast"],
                       "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]},
                      f, indent=2)
        if not dev:
            bfl = os.path.join(OUT, "schnell")
            os.makedirs(bfl)
            from safetensors.torch import load_file
            tsd = {}
            for fn in sorted(os.listdir(dirs["transformer"])):
                if fn.endswith(".safetensors"):
                    tsd.update(load_file(os.path.join(dirs["transformer"], fn)))
            params = {"in_channels": 64, "out_channels": 64, "vec_in_dim": 4, "context_in_dim": 4, "hidden_size": 32,
                      "mlp_ratio": 4.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6],
                      "theta": 10000, "qkv_bias": True, "guidance_embed": False}
            save_file({k: v.contiguous() for k, v in transformer_to_bfl(tsd).items()},
                      os.path.join(bfl, "flux1-schnell.safetensors"), metadata={"flux_params": json.dumps(params)})
            vsd = load_file(os.path.join(dirs["vae"], "diffusion_pytorch_model.safetensors"))
            save_file({k: v.contiguous() for k, v in vae_to_bfl(vsd).items()}, os.path.join(bfl, "ae.safetensors"))
        gen = torch.Generator().manual_seed(7 if dev else 8)
        planar = torch.randn(1, 16, HEIGHT // 8, WIDTH // 8, generator=gen)
        noise = pack(planar)
        image, latents = run_reference(dirs, dev, clip_tok, t5_tok, noise)
        save_file({"latents": noise if dev else planar}, os.path.join(OUT, f"{variant}.noise.safetensors"))
        meta = {"prompt": PROMPT, "width": str(WIDTH), "height": str(HEIGHT), "steps": str(STEPS),
                "guidance": str(GUIDANCE if dev else 0.0), "reference": "diffusers FluxPipeline, float64"}
        save_file({"image": image, "latents": latents}, os.path.join(OUT, f"{variant}.expected.safetensors"),
                  metadata=meta)
        print(f"{variant}: image range [{image.min():.4f}, {image.max():.4f}], std {image.std():.4f}")
    shutil.rmtree(tmp)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
