"""Writes the golden fixtures of the Flux model under tests/fixtures/ from the PyTorch reference.

Two tiny configurations cover both code paths of the architecture:
  a: guidance embedding and qkv bias, a non-square 3x5 token grid, 7 text tokens
  b: neither (schnell-like), a different width of patch features, a 4x2 grid, 5 text tokens
Both use batch 2. The reference runs in float64 and stores float32, so a comparison measures the
C model's error only. For each configuration NAME it writes:
  flux_NAME.model.safetensors     random weights under the original key names, FluxParams in metadata
  flux_NAME.inputs.safetensors    img, img_ids, txt, txt_ids, timesteps, y (and guidance)
  flux_NAME.lora.safetensors      a LoRA on every block linear, rank 4, alpha 6 (canonical keys)
  flux_NAME.lora_kohya.safetensors the same adapter in kohya's layout (lora_down/lora_up/alpha)
  flux_NAME.lora2.safetensors     a second adapter (attention only, rank 2, alpha 1)
  flux_NAME.expected.safetensors  outputs without LoRA, with the LoRA at scale 0.8, with both
                                  adapters (0.8 and -0.5); the flow-matching loss on (x0, noise, t)
                                  and its gradients w.r.t. every LoRA A and B (scale 1); config b
                                  also the gradients w.r.t. every base weight (no LoRA).
Run with Debian's python3-torch:  /usr/bin/python3 tests/reference/make_flux_fixtures.py
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_reference as ref  # noqa: E402
import st_io  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")

CONFIGS = {
    "a": dict(params=ref.FluxParams(in_channels=16, out_channels=16, vec_in_dim=12, context_in_dim=20,
                                    hidden_size=32, mlp_ratio=2.5, num_heads=2, depth=2, depth_single_blocks=2,
                                    axes_dim=[4, 6, 6], theta=10000, qkv_bias=True, guidance_embed=True),
              grid=(3, 5), txt_len=7, seed=1234, full_grads=False),
    "b": dict(params=ref.FluxParams(in_channels=12, out_channels=12, vec_in_dim=10, context_in_dim=24,
                                    hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=1, depth_single_blocks=2,
                                    axes_dim=[2, 6, 8], theta=2000, qkv_bias=False, guidance_embed=False),
              grid=(4, 2), txt_len=5, seed=5678, full_grads=True),
}
BATCH = 2
LORA_RANK, LORA_ALPHA = 4, 6.0
LORA2_RANK, LORA2_ALPHA = 2, 1.0


def make_inputs(p, grid, txt_len, g):
    h, w = grid
    img_ids = torch.zeros(BATCH, h * w, 3)
    img_ids[..., 1] = torch.arange(h).repeat_interleave(w).float()
    img_ids[..., 2] = torch.arange(w).repeat(h).float()
    img_ids[1, :, 0] = 1.0  # a non-zero first axis in the second sample exercises all three axes
    inputs = {
        "img": torch.randn(BATCH, h * w, p.in_channels, generator=g),
        "img_ids": img_ids,
        "txt": torch.randn(BATCH, txt_len, p.context_in_dim, generator=g),
        "txt_ids": torch.zeros(BATCH, txt_len, 3),
        "timesteps": torch.tensor([0.25, 0.8]),
        "y": torch.randn(BATCH, p.vec_in_dim, generator=g),
    }
    if p.guidance_embed:
        inputs["guidance"] = torch.tensor([3.5, 1.0])
    return inputs


def lora_file(params, rank, alpha, targets, kohya=False):
    tensors = {}
    for name, (a, b) in params.items():
        if kohya:
            tensors[ref.kohya_name(name) + ".lora_down.weight"] = a
            tensors[ref.kohya_name(name) + ".lora_up.weight"] = b
            tensors[ref.kohya_name(name) + ".alpha"] = torch.tensor(alpha)
        else:
            tensors[name + ".lora_A.weight"] = a
            tensors[name + ".lora_B.weight"] = b
    meta = None if kohya else {"format": "flashlora.lora.v1", "rank": rank, "alpha": alpha, "targets": targets}
    return {k: v.float() for k, v in tensors.items()}, meta


def call(model, inputs, img=None, t=None):
    return model(inputs["img"] if img is None else img, inputs["img_ids"], inputs["txt"], inputs["txt_ids"],
                 inputs["timesteps"] if t is None else t, inputs["y"], inputs.get("guidance"))


def build(name, cfg):
    p = cfg["params"]
    g = torch.Generator().manual_seed(cfg["seed"])
    torch.set_default_dtype(torch.float64)
    model = ref.Flux(p)
    ref.init_random_weights(model, g)
    for param in model.parameters():
        param.requires_grad_(False)
    inputs = {k: v.double() for k, v in make_inputs(p, cfg["grid"], cfg["txt_len"], g).items()}
    expected = {}

    with torch.no_grad():
        expected["out"] = call(model, inputs)

    # Adapter 1 on every block linear (multiplier 0.8 for the forward, 1.0 for training).
    targets1 = ref.lora_targets(model, "all")
    lora1 = ref.attach_lora(model, targets1, LORA_RANK, LORA_ALPHA, 0.8, g)
    with torch.no_grad():
        expected["out_lora"] = call(model, inputs)
    # Adapter 2 stacked on the attention linears.
    targets2 = ref.lora_targets(model, "attention")
    lora2 = ref.attach_lora(model, targets2, LORA2_RANK, LORA2_ALPHA, -0.5, g)
    with torch.no_grad():
        expected["out_lora2"] = call(model, inputs)

    # Training: only adapter 1, at multiplier 1.
    for _, module in model.linears():
        module.adapters = []
    for name_, module in targets1:
        a, b = lora1[name_]
        module.adapters.append((a, b, LORA_ALPHA / LORA_RANK))
    x0 = inputs["img"]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0.3, 0.9])
    loss = ref.flow_matching_loss(model, x0, noise, t, inputs["img_ids"], inputs["txt"], inputs["txt_ids"],
                                  inputs["y"], inputs.get("guidance"))
    loss.backward()
    expected.update({"train.x0": x0, "train.noise": noise, "train.t": t, "train.loss": loss.detach().reshape(1)})
    for name_, (a, b) in lora1.items():
        expected["grad." + name_ + ".lora_A.weight"] = a.grad
        expected["grad." + name_ + ".lora_B.weight"] = b.grad

    if cfg["full_grads"]:
        for _, module in model.linears():
            module.adapters = []
        for param in model.parameters():
            param.requires_grad_(True)
            param.grad = None
        loss_full = ref.flow_matching_loss(model, x0, noise, t, inputs["img_ids"], inputs["txt"], inputs["txt_ids"],
                                           inputs["y"], inputs.get("guidance"))
        loss_full.backward()
        expected["train_full.loss"] = loss_full.detach().reshape(1)
        for key, param in model.named_parameters():
            expected["grad_full." + key.replace(".base.", ".")] = param.grad

    params_json = json.dumps(vars(p))
    prefix = os.path.join(OUT, "flux_" + name)
    st_io.save(prefix + ".model.safetensors", {k: v.float() for k, v in model.checkpoint_state().items()},
               {"flux_params": params_json})
    st_io.save(prefix + ".inputs.safetensors", {k: v.float() for k, v in inputs.items()})
    tensors, meta = lora_file(lora1, LORA_RANK, LORA_ALPHA, "all")
    st_io.save(prefix + ".lora.safetensors", tensors, meta)
    tensors, meta = lora_file(lora1, LORA_RANK, LORA_ALPHA, "all", kohya=True)
    st_io.save(prefix + ".lora_kohya.safetensors", tensors, meta)
    tensors, meta = lora_file(lora2, LORA2_RANK, LORA2_ALPHA, "attention")
    st_io.save(prefix + ".lora2.safetensors", tensors, meta)
    st_io.save(prefix + ".expected.safetensors", {k: v.float() for k, v in expected.items()},
               {"flux_params": params_json, "lora_scale": "0.8", "lora2_scale": "-0.5"})
    print(f"flux_{name}: out scale {expected['out'].abs().max().item():.3f}, loss {loss.item():.6f}, "
          f"{len(lora1)} LoRA targets")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for config_name, config in CONFIGS.items():
        build(config_name, config)
