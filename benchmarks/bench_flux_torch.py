"""The PyTorch peer of bench_flux_cpu.c: the same Flux problem run by current PyTorch on the
upstream model code, diffusers' FluxTransformer2DModel (SDPA attention), eager and torch.compile.

It reads the file `bench_flux_cpu --dump FILE` wrote (weights under the checkpoint names, the
LoRA A/B, the inputs and flashlora's results), maps the weights onto diffusers' names, and checks
that the forward output, the step loss and two LoRA gradients agree with flashlora's before it
times anything: the same work is timed. LoRA (rank and scale as flashlora's) wraps every block
Linear; where diffusers splits one of the checkpoint's Linears (a fused qkv, single-block linear1)
each part keeps its rows of B and shares A, which is exactly the fused Linear's adapter. The LoRA
step is zero_grad, the flow-matching loss, backward, and torch.optim.AdamW (lr 1e-4, weight decay
0.01) on the LoRA parameters only. Prints JSON lines like the C benchmark (median and minimum).

    python bench_flux_torch.py DUMP [repetitions]     threads: FLASHLORA_THREADS
"""

import json
import math
import os
import sys
import time

import diffusers
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel
from safetensors import safe_open

DOUBLE = {  # checkpoint suffix -> diffusers parts (row split of the weight)
    "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "img_attn.proj": ["attn.to_out.0"],
    "txt_attn.proj": ["attn.to_add_out"],
    "img_mlp.0": ["ff.net.0.proj"],
    "img_mlp.2": ["ff.net.2"],
    "txt_mlp.0": ["ff_context.net.0.proj"],
    "txt_mlp.2": ["ff_context.net.2"],
    "img_mod.lin": ["norm1.linear"],
    "txt_mod.lin": ["norm1_context.linear"],
}
DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
SINGLE = {
    "linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    "linear2": ["proj_out"],
    "modulation.lin": ["norm.linear"],
}
SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # diffusers holds (scale, shift): halves swapped
}


def linear_parts(module, hidden, mlp):
    """The checkpoint Linear `module` as [(diffusers module, row count)] (None counts: equal split)."""
    kind, _, rest = module.partition(".")
    if kind in ("double_blocks", "single_blocks"):
        index, _, suffix = rest.partition(".")
        table, prefix = (DOUBLE, "transformer_blocks") if kind == "double_blocks" else (SINGLE, "single_transformer_blocks")
        names = [f"{prefix}.{index}.{p}" for p in table[suffix]]
        rows = [hidden, hidden, hidden, mlp] if suffix == "linear1" else None
        return names, rows
    return [TOP[module]], None


def diffusers_state(tensors, hidden, mlp):
    state = {}
    for key, value in tensors.items():
        if key.startswith(("lora.", "in.", "out.")):
            continue
        module, _, leaf = key.rpartition(".")
        if leaf == "scale":
            kind, _, rest = key.partition(".")
            index, _, suffix = rest.partition(".")
            if kind == "double_blocks":
                state[f"transformer_blocks.{index}.{DOUBLE_NORMS[suffix]}"] = value
            else:
                state[f"single_transformer_blocks.{index}.{SINGLE_NORMS[suffix]}"] = value
            continue
        names, rows = linear_parts(module, hidden, mlp)
        if module == "final_layer.adaLN_modulation.1":
            value = torch.cat(value.chunk(2, dim=0)[::-1], dim=0)
        parts = value.split(rows, dim=0) if rows else value.chunk(len(names), dim=0)
        for name, part in zip(names, parts):
            state[f"{name}.{leaf}"] = part.contiguous()
    return state


class LoRALinear(torch.nn.Module):
    """base(x) + scale * (x A^T) B^T, with A possibly shared between the parts of one Linear."""

    def __init__(self, base, a, b, scale):
        super().__init__()
        self.base, self.a, self.b, self.scale = base, a, b, scale

    def forward(self, x):
        return self.base(x) + self.scale * F.linear(F.linear(x, self.a), self.b)


def attach_lora(model, tensors, hidden, mlp, rank):
    params, by_module = [], {}
    for key in tensors:
        if not (key.startswith("lora.") and key.endswith(".a")):
            continue
        module = key[len("lora."):-len(".a")]
        a = torch.nn.Parameter(tensors[key].clone())
        b_full = tensors[f"lora.{module}.b"]
        names, rows = linear_parts(module, hidden, mlp)
        b_parts = b_full.split(rows, dim=0) if rows else b_full.chunk(len(names), dim=0)
        params.append(a)
        by_module[module] = []
        for name, b_part in zip(names, b_parts):
            b = torch.nn.Parameter(b_part.clone().contiguous())
            params.append(b)
            by_module[module].append(b)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(getattr(parent, child), a, b, 1.0))  # alpha = rank: scale 1
    return params, by_module


def median_ms(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2], times[0]


def rel_err(x, ref):
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


def main():
    dump = sys.argv[1]
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    threads = int(os.environ.get("FLASHLORA_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    with safe_open(dump, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    p = json.loads(meta["flux_params"])
    config, rank = meta["config"], int(meta["lora_rank"])
    hidden, heads = p["hidden_size"], p["num_heads"]
    mlp = int(hidden * p["mlp_ratio"])
    assert p["mlp_ratio"] == 4.0 and p["theta"] == 10000 and p["qkv_bias"], "diffusers fixes these"
    model = FluxTransformer2DModel(patch_size=1, in_channels=p["in_channels"], out_channels=p["out_channels"],
                                   num_layers=p["depth"], num_single_layers=p["depth_single_blocks"],
                                   attention_head_dim=hidden // heads, num_attention_heads=heads,
                                   joint_attention_dim=p["context_in_dim"], pooled_projection_dim=p["vec_in_dim"],
                                   guidance_embeds=p["guidance_embed"], axes_dims_rope=tuple(p["axes_dim"]))
    missing, unexpected = model.load_state_dict(diffusers_state(tensors, hidden, mlp), strict=True)
    assert not missing and not unexpected
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)

    x0, noise, txt, y = tensors["in.x0"], tensors["in.noise"], tensors["in.txt"], tensors["in.y"]
    t = tensors["in.t"]
    guidance = tensors["in.guidance"] if p["guidance_embed"] else None
    img_ids, txt_ids = tensors["in.img_ids"][0], tensors["in.txt_ids"][0]  # the same for every sample

    def run(net, x):
        return net(hidden_states=x, encoder_hidden_states=txt, pooled_projections=y, timestep=t, img_ids=img_ids,
                   txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    with torch.no_grad():
        err = rel_err(run(model, x0), tensors["out.forward"])
    print(json.dumps({"check": "forward", "config": config, "rel_l2_error": err, **versions}), flush=True)
    assert err < 1e-4, f"forward differs from flashlora's: relative L2 error {err:.3g}"

    params, by_module = attach_lora(model, tensors, hidden, mlp, rank)
    tb = t.view(-1, 1, 1)
    xt, target = (1 - tb) * x0 + tb * noise, noise - x0
    loss = F.mse_loss(run(model, xt), target)
    loss.backward()
    checks = {"loss": abs(loss.item() - tensors["out.loss"].item()) / abs(tensors["out.loss"].item())}
    for key in tensors:
        if key.startswith("out.grad_b."):
            module = key[len("out.grad_b."):]
            checks[module] = rel_err(torch.cat([b.grad for b in by_module[module]], dim=0), tensors[key])
    print(json.dumps({"check": "lora_step", "config": config, "rel_errors": checks}), flush=True)
    assert all(v < 1e-3 for v in checks.values()), f"LoRA step differs from flashlora's: {checks}"

    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    compiled = torch.compile(model)
    for name, net, warmup in (("pytorch-eager", model, 1), ("pytorch-compile", compiled, 2)):
        def forward():
            with torch.no_grad():
                run(net, x0)

        def step():
            opt.zero_grad(set_to_none=True)
            F.mse_loss(run(net, xt), target).backward()
            opt.step()

        for what, fn in (("forward", forward), ("lora_step", step)):
            ms, low = median_ms(fn, reps, warmup)
            print(json.dumps({"impl": name, "config": config, "what": what, "threads": threads, "ms": round(ms, 2),
                              "min_ms": round(low, 2), **versions}), flush=True)
    assert math.isfinite(loss.item())


if __name__ == "__main__":
    main()
