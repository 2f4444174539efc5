"""Writes the autoencoder's golden fixtures and manifests under tests/fixtures/.

A tiny random autoencoder (ch 32, ch_mult [1, 2], num_res_blocks 1, z_channels 4: every kind of
block, a width change in each half so both need nin_shortcut, channel counts divisible by
GroupNorm's 32 groups; diffusers can only express ch_mult[0] == 1) runs in float64 through the hand-written BFL reference (ae_reference.py).
Weights are rounded to bfloat16 and stored as BF16, so the C model loads exactly the values the
reference used and a comparison measures only the C model's float32 arithmetic.

  ae_tiny.safetensors        the weights under BFL's ae.safetensors names (BF16)
  ae_tiny.io.safetensors     image [2, 3, 24, 40] in [-1, 1]; latents = encode(image) (the scaled,
                             shifted mean) [2, 4, 12, 20] and tokens = pack(latents) [2, 60, 16];
                             dec_latents (normal) and dec_tokens = pack(dec_latents);
                             decoded = decode(dec_latents) [2, 3, 24, 40]; roundtrip =
                             decode(latents). Stored as F32; the reference ran in float64.
  ae_tiny.diffusers.json     how diffusers' AutoencoderKL stores these weights: its config.json (as
                             save_config writes it) and, in its state_dict order, each tensor's
                             diffusers key, shape and BFL key. Checked here: diffusers loads the
                             renamed weights strictly and its encode/decode equal the reference's on
                             the same inputs. The C test writes the diffusers-layout file from it
                             (the weights themselves are not stored twice).
  ae.manifest.json           every tensor (name, shape) of the real FLUX.1 ae.safetensors, from
                             the reference at the published parameters on the meta device
  ae-diffusers.manifest.json the same for the diffusers vae/ of FLUX.1 (AutoencoderKL's own
                             state_dict at the FLUX.1 config)

Needs torch (Debian python3-torch 1.13 works) and, for the diffusers parts, diffusers 0.31.0 with
huggingface_hub < 0.26 in a venv made with --system-site-packages. CI never runs this.
Run:  build-venv/bin/python tests/reference/make_ae_fixtures.py
"""

import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ae_reference as ref  # noqa: E402
import st_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
TINY = ref.AutoEncoderParams(resolution=32, in_channels=3, ch=32, out_ch=3, ch_mult=[1, 2], num_res_blocks=1,
                             z_channels=4, scale_factor=0.3611, shift_factor=0.1159)
BATCH, HEIGHT, WIDTH = 2, 24, 40
FLUX1 = ref.AutoEncoderParams()


def diffusers_config(p):
    levels = len(p.ch_mult)
    return dict(in_channels=p.in_channels, out_channels=p.out_ch, latent_channels=p.z_channels,
                block_out_channels=tuple(p.ch * m for m in p.ch_mult), layers_per_block=p.num_res_blocks,
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
                scaling_factor=p.scale_factor, shift_factor=p.shift_factor, sample_size=p.resolution)


def tiny_model():
    g = torch.Generator().manual_seed(20240611)
    torch.manual_seed(20240611)
    model = ref.AutoEncoder(TINY).double()
    with torch.no_grad():
        for name, t in model.named_parameters():
            if ".norm" in name or "norm_out" in name:  # GroupNorm affine: around (1, 0)
                base = 1.0 if name.endswith("weight") else 0.0
                t.copy_(base + 0.2 * torch.randn(t.shape, generator=g, dtype=torch.float64))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g, dtype=torch.float64))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64) / math.sqrt(fan_in))
            t.copy_(t.to(torch.bfloat16).to(torch.float64))
    return model, g


def write_tiny():
    model, g = tiny_model()
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    st_io.save(os.path.join(OUT, "ae_tiny.safetensors"), state)
    image = (2 * torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=g, dtype=torch.float64) - 1).float().double()
    h, w = HEIGHT // 2, WIDTH // 2
    dec_latents = torch.randn(BATCH, TINY.z_channels, h, w, generator=g, dtype=torch.float64).float().double()
    with torch.no_grad():
        latents = model.encode(image)
        decoded = model.decode(dec_latents)
        roundtrip = model.decode(latents)
    assert torch.equal(ref.unpack(ref.pack(latents), h, w), latents)
    io = {"image": image, "latents": latents, "tokens": ref.pack(latents), "dec_latents": dec_latents,
          "dec_tokens": ref.pack(dec_latents), "decoded": decoded, "roundtrip": roundtrip}
    st_io.save(os.path.join(OUT, "ae_tiny.io.safetensors"), {k: v.float() for k, v in io.items()},
               metadata={"ae_params": json.dumps(vars(TINY))})
    for k, v in io.items():
        print(f"  {k}: {list(v.shape)} max |x| {v.abs().max().item():.3f}")
    return model, io


def write_tiny_diffusers(model, io):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**diffusers_config(TINY)).double().eval()
    state = ref.to_diffusers_state(model.state_dict(), len(TINY.ch_mult))
    missing, unexpected = vae.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        mean = vae.encode(io["image"]).latent_dist.mean
        latents = (mean - TINY.shift_factor) * TINY.scale_factor
        decoded = vae.decode(io["dec_latents"] / TINY.scale_factor + TINY.shift_factor).sample
    for what, got, want in (("encode", latents, io["latents"]), ("decode", decoded, io["decoded"])):
        err = (got - want).abs().max().item()
        print(f"  diffusers {what} vs the BFL reference: max |diff| {err:.3e}")
        assert err < 1e-6, what  # diffusers upcasts the attention softmax to float32
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        vae.save_config(tmp)
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
    pairs = {ref.bfl_to_diffusers(name, len(TINY.ch_mult))[0]: name for name in model.state_dict()}
    tensors = [[key, list(t.shape), pairs[key]] for key, t in vae.state_dict().items()]
    assert len(tensors) == len(pairs)
    path = os.path.join(OUT, "ae_tiny.diffusers.json")
    with open(path, "w") as f:
        f.write('{"config": ' + json.dumps(config, sort_keys=True) + ',\n"tensors": [\n')
        f.write(",\n".join(json.dumps(t) for t in tensors))
        f.write("\n]}\n")
    print(f"{path}: {len(tensors)} tensors")


def write_manifest(path, model_name, params_doc, tensors):
    total = sum(math.prod(shape) for _, shape in tensors)
    head = {"model": model_name, "ae_params": params_doc, "parameters": total}
    with open(path, "w") as f:  # one tensor a line, so diffs stay readable
        f.write(json.dumps(head)[:-1] + ', "tensors": [\n')
        f.write(",\n".join(json.dumps(t) for t in tensors))
        f.write("\n]}\n")
    print(f"{path}: {len(tensors)} tensors, {total:,} parameters")


def write_manifests():
    ref.FACTORY["device"] = "meta"
    model = ref.AutoEncoder(FLUX1)
    ref.FACTORY.clear()
    tensors = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    write_manifest(os.path.join(OUT, "ae.manifest.json"), "FLUX.1 autoencoder (ae.safetensors)", vars(FLUX1), tensors)
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        print("diffusers is not installed: ae-diffusers.manifest.json not written")
        return
    vae = AutoencoderKL(**diffusers_config(FLUX1))
    tensors = [[name, list(t.shape)] for name, t in vae.state_dict().items()]
    write_manifest(os.path.join(OUT, "ae-diffusers.manifest.json"), "FLUX.1 autoencoder (diffusers vae/)",
                   vars(FLUX1), tensors)


def main():
    model, io = write_tiny()
    try:
        import diffusers  # noqa: F401
        write_tiny_diffusers(model, io)
    except ImportError:
        print("diffusers is not installed: ae_tiny_diffusers/ not written")
    write_manifests()


if __name__ == "__main__":
    main()
