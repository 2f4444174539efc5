"""Writes the tensor manifests of the real FLUX.1-dev and FLUX.1-schnell checkpoints.

Each manifest lists every tensor of the original single-file checkpoint (no prefix) with its
shape and dtype, derived from the reference model built at the published FluxParams on the meta
device (no memory, no weights). The C tests check that a header with exactly these entries is
recognised as Flux dev/schnell and would bind, and that a missing or misshaped tensor is named.
Run:  /usr/bin/python3 tests/reference/make_flux_manifests.py
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import flux_reference as ref  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


def params(guidance):
    return ref.FluxParams(in_channels=64, out_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                          mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38, axes_dim=[16, 56, 56],
                          theta=10000, qkv_bias=True, guidance_embed=guidance)


def main():
    ref.FACTORY["device"] = "meta"
    for variant, guidance in (("dev", True), ("schnell", False)):
        p = params(guidance)
        model = ref.Flux(p)
        tensors = [[name, list(t.shape)] for name, t in model.checkpoint_state().items()]
        total = sum(int(__import__("math").prod(shape)) for _, shape in tensors)
        doc = {"model": "FLUX.1-" + variant, "dtype": "BF16", "flux_params": vars(p), "parameters": total,
               "tensors": tensors}
        path = os.path.join(OUT, f"flux1-{variant}.manifest.json")
        with open(path, "w") as f:  # one tensor a line, so diffs stay readable
            head = {k: v for k, v in doc.items() if k != "tensors"}
            f.write(json.dumps(head)[:-1] + ', "tensors": [\n')
            f.write(",\n".join(json.dumps(t) for t in tensors))
            f.write("\n]}\n")
        print(f"{path}: {len(tensors)} tensors, {total / 1e9:.3f}B parameters")


if __name__ == "__main__":
    main()
