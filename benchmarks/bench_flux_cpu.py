"""PyTorch eager timing of the same Flux config as bench_flux_cpu.c (the tests/reference model,
float32, CPU): the forward (no grad) and the LoRA step (forward + backward to every LoRA A/B).
Prints JSON lines like the C benchmark. Threads: FLASHLORA_THREADS (torch.set_num_threads)."""

import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import flux_reference as ref  # noqa: E402


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    threads = int(os.environ.get("FLASHLORA_THREADS", os.cpu_count()))
    torch.set_num_threads(threads)
    p = ref.FluxParams(in_channels=64, out_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=256,
                       mlp_ratio=4.0, num_heads=4, depth=2, depth_single_blocks=4, axes_dim=[8, 28, 28], theta=10000,
                       qkv_bias=True, guidance_embed=True)
    g = torch.Generator().manual_seed(0)
    model = ref.Flux(p)
    ref.init_random_weights(model, g)
    for param in model.parameters():
        param.requires_grad_(False)
    batch, grid, lt = 4, 16, 16
    img_ids = torch.zeros(batch, grid * grid, 3)
    img_ids[..., 1] = torch.arange(grid).repeat_interleave(grid).float()
    img_ids[..., 2] = torch.arange(grid).repeat(grid).float()
    x0 = torch.randn(batch, grid * grid, 64, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    txt = torch.randn(batch, lt, 4096, generator=g)
    txt_ids = torch.zeros(batch, lt, 3)
    y = torch.randn(batch, 768, generator=g)
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    guidance = torch.full((batch,), 3.5)

    def forward():
        with torch.no_grad():
            model(x0, img_ids, txt, txt_ids, t, y, guidance)

    ms = median_ms(forward, reps)
    print(json.dumps({"impl": "pytorch", "version": torch.__version__, "what": "forward", "threads": threads,
                      "ms": round(ms, 2)}))

    targets = ref.lora_targets(model, "all")
    params = ref.attach_lora(model, targets, 16, 16.0, 1.0, g, b_std=0.0)

    def step():
        for a, b in params.values():
            a.grad = None
            b.grad = None
        loss = ref.flow_matching_loss(model, x0, noise, t, img_ids, txt, txt_ids, y, guidance)
        loss.backward()

    ms = median_ms(step, reps)
    print(json.dumps({"impl": "pytorch", "version": torch.__version__, "what": "lora_step", "threads": threads,
                      "ms": round(ms, 2)}))


if __name__ == "__main__":
    main()
