"""peft_crosscheck.py — flashlora's PEFT/diffusers LoRA files against an independent reading of
them with the semantics diffusers and PEFT apply (standard library only, so it runs anywhere).

Usage: python3 peft_crosscheck.py LORA_CONVERT   (the tests/adapters/lora_convert helper)

Export: a random canonical adapter on every Linear of a tiny Flux model (ranks 1..4, per-module
alpha tensors) is converted to the peft and kohya layouts. For peft, every diffusers module's
ΔW = scaling · B · A, with scaling = lora_alpha / r resolved from the saved LoraConfig as PEFT
does (r / lora_alpha overridden by the first matching rank_pattern / alpha_pattern key), is put
back into the original layout by the checkpoint conversion rules (q/k/v[/proj_mlp] rows
concatenated; norm_out.linear's (scale, shift) halves reordered to (shift, scale)) and must equal
the canonical ΔW within 1e-6 relative. Kohya: ΔW = alpha / rank · up · down per module.
Import: a hand-made diffusers file (q/v without k, parts with different A's, parts sharing one A,
regex alpha_pattern, rank_pattern, norm_out.linear) converted to canonical must give, per
original module, the ΔW PEFT would apply, with zero rows for the absent parts.
"""

import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile

H, MLP, IN_CH, OUT_CH, CTX, VEC, DEPTH, SINGLE = 32, 80, 16, 16, 20, 12, 2, 2
TOL = 1e-6
results = {"passed": 0, "failed": 0}


def check(ok, what):
    results["passed" if ok else "failed"] += 1
    if not ok:
        print(f"FAIL {what}")


def flux_linears():
    """(module, in, out) for every Linear of the tiny Flux model, original layout."""
    mods = [("img_in", IN_CH, H), ("time_in.in_layer", 256, H), ("time_in.out_layer", H, H),
            ("vector_in.in_layer", VEC, H), ("vector_in.out_layer", H, H),
            ("guidance_in.in_layer", 256, H), ("guidance_in.out_layer", H, H), ("txt_in", CTX, H)]
    for i in range(DEPTH):
        for s in ("img", "txt"):
            mods += [(f"double_blocks.{i}.{s}_mod.lin", H, 6 * H), (f"double_blocks.{i}.{s}_attn.qkv", H, 3 * H),
                     (f"double_blocks.{i}.{s}_attn.proj", H, H), (f"double_blocks.{i}.{s}_mlp.0", H, MLP),
                     (f"double_blocks.{i}.{s}_mlp.2", MLP, H)]
    for i in range(SINGLE):
        mods += [(f"single_blocks.{i}.linear1", H, 3 * H + MLP), (f"single_blocks.{i}.linear2", H + MLP, H),
                 (f"single_blocks.{i}.modulation.lin", H, 3 * H)]
    return mods + [("final_layer.linear", H, OUT_CH), ("final_layer.adaLN_modulation.1", H, 2 * H)]


def diffusers_parts(module, n_in, n_out):
    """The diffusers modules holding the module's output rows in order, with their row counts, and
    whether the two halves are swapped (diffusers' Flux checkpoint conversion)."""
    m = re.fullmatch(r"double_blocks\.(\d+)\.(img|txt)_(.+)", module)
    if m:
        i, stream, rest = m.groups()
        img = stream == "img"
        ff = "ff" if img else "ff_context"
        table = {
            "attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"] if img
            else ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
            "attn.proj": ["attn.to_out.0" if img else "attn.to_add_out"],
            "mlp.0": [ff + ".net.0.proj"],
            "mlp.2": [ff + ".net.2"],
            "mod.lin": ["norm1.linear" if img else "norm1_context.linear"],
        }
        parts = [f"transformer_blocks.{i}.{p}" for p in table[rest]]
        return [(p, n_out // len(parts)) for p in parts], False
    m = re.fullmatch(r"single_blocks\.(\d+)\.(.+)", module)
    if m:
        i, rest = m.groups()
        base = f"single_transformer_blocks.{i}."
        if rest == "linear1":
            return [(base + p, n_in) for p in ("attn.to_q", "attn.to_k", "attn.to_v")] + \
                   [(base + "proj_mlp", n_out - 3 * n_in)], False
        return [(base + {"linear2": "proj_out", "modulation.lin": "norm.linear"}[rest], n_out)], False
    m = re.fullmatch(r"(time_in|guidance_in|vector_in)\.(in|out)_layer", module)
    if m:
        emb = {"time_in": "timestep_embedder", "guidance_in": "guidance_embedder", "vector_in": "text_embedder"}
        return [(f"time_text_embed.{emb[m.group(1)]}.linear_{1 if m.group(2) == 'in' else 2}", n_out)], False
    top = {"img_in": "x_embedder", "txt_in": "context_embedder", "final_layer.linear": "proj_out",
           "final_layer.adaLN_modulation.1": "norm_out.linear"}
    return [(top[module], n_out)], module == "final_layer.adaLN_modulation.1"


def st_write(path, tensors, metadata):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, (shape, values) in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def st_read(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", f"{name}: {info['dtype']}"
        b, e = info["data_offsets"]
        out[name] = (info["shape"], list(struct.unpack(f"<{(e - b) // 4}f", data[8 + n + b:8 + n + e])))
    return out, meta


def delta(a, b, scale):
    """scale · B · A as rows, for A = (shape [r, in], values) and B = (shape [out, r], values)."""
    (rank, n_in), av = a
    (n_out, _), bv = b
    return [[scale * sum(bv[o * rank + r] * av[r * n_in + i] for r in range(rank)) for i in range(n_in)]
            for o in range(n_out)]


def compare(what, got, want):
    scale = max((abs(x) for row in want for x in row), default=0.0)
    shape_ok = len(got) == len(want) and all(len(g) == len(w) for g, w in zip(got, want))
    worst = max((abs(x - y) for g, w in zip(got, want) for x, y in zip(g, w)), default=0.0) if shape_ok else math.inf
    ok = worst <= TOL * max(scale, 1e-30) or (scale == 0 and worst == 0)
    check(ok, f"{what}: error {worst:.3g} (scale {scale:.3g})")


def peft_scaling(config, path, rank):
    """PEFT: r and lora_alpha, overridden by the first rank_pattern / alpha_pattern key that names
    the module exactly or matches it as (.*\\.)?(key)$."""
    def pattern(field):
        keys = config.get(field) or {}
        if path in keys:
            return keys[path]
        for key, value in keys.items():
            if re.match(rf"(.*\.)?({key})$", path):
                return value
        return None
    r = pattern("rank_pattern") or config.get("r", 8)
    alpha = pattern("alpha_pattern") or config.get("lora_alpha", 8)
    check(r == rank, f"{path}: PEFT builds rank {r}, the file holds rank {rank}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def canonical_deltas(tensors, meta):
    """ΔW per module of a canonical file (alpha: <module>.alpha, else metadata, else rank)."""
    out = {}
    for name in tensors:
        if name.endswith(".lora_A.weight"):
            module = name[:-len(".lora_A.weight")]
            a, b = tensors[name], tensors[module + ".lora_B.weight"]
            alpha = tensors[module + ".alpha"][1][0] if module + ".alpha" in tensors else \
                float(meta["alpha"]) if "alpha" in meta else a[0][0]
            out[module] = delta(a, b, alpha / a[0][0])
    return out


def convert(tool, src, layout, dst):
    run = subprocess.run([tool, src, layout, dst], capture_output=True, text=True)
    check(run.returncode == 0, f"lora_convert {layout}: {run.stderr.strip()}")
    return run.returncode == 0


def test_export(tool, tmp):
    rng = random.Random(7)
    tensors = {}
    for k, (module, n_in, n_out) in enumerate(flux_linears()):
        rank = 1 + k % 4
        tensors[module + ".lora_A.weight"] = ([rank, n_in], [rng.gauss(0, 0.5) for _ in range(rank * n_in)])
        tensors[module + ".lora_B.weight"] = ([n_out, rank], [rng.gauss(0, 0.5) for _ in range(n_out * rank)])
        tensors[module + ".alpha"] = ([], [round(rng.uniform(0.5, 8.0), 2)])
    canonical = os.path.join(tmp, "canonical.safetensors")
    st_write(canonical, tensors, {"format": "flashlora.lora.v1"})
    want = canonical_deltas(*st_read(canonical))

    peft = os.path.join(tmp, "peft.safetensors")
    if convert(tool, canonical, "peft", peft):
        t, meta = st_read(peft)
        check(meta.get("format") == "pt", "peft: format metadata")
        config = {k[len("transformer."):] if k.startswith("transformer.") else k: v
                  for k, v in json.loads(meta["lora_adapter_metadata"]).items()}
        used = set()
        for module, n_in, n_out in flux_linears():
            parts, swapped = diffusers_parts(module, n_in, n_out)
            rows = []
            for path, _ in parts:
                a, b = t[f"transformer.{path}.lora_A.weight"], t[f"transformer.{path}.lora_B.weight"]
                used |= {f"transformer.{path}.lora_A.weight", f"transformer.{path}.lora_B.weight"}
                rows += delta(a, b, peft_scaling(config, path, a[0][0]))
            if swapped:  # diffusers (scale, shift) -> original (shift, scale)
                rows = rows[len(rows) // 2:] + rows[:len(rows) // 2]
            compare(f"export peft {module}", rows, want[module])
        check(used == set(t), f"peft: unexpected keys {sorted(set(t) - used)[:3]}")

    kohya = os.path.join(tmp, "kohya.safetensors")
    if convert(tool, canonical, "kohya", kohya):
        t, _ = st_read(kohya)
        for module, _, _ in flux_linears():
            stem = "lora_unet_" + module.replace(".", "_")
            down, up = t[stem + ".lora_down.weight"], t[stem + ".lora_up.weight"]
            alpha = t[stem + ".alpha"]
            check(alpha[0] == [], f"kohya {stem}.alpha is a scalar")
            compare(f"export kohya {module}", delta(down, up, alpha[1][0] / down[0][0]), want[module])


def test_import(tool, tmp):
    rng = random.Random(11)

    def mat(rows, cols):
        return ([rows, cols], [rng.gauss(0, 1.0) for _ in range(rows * cols)])

    shared = mat(4, H)
    parts = {  # diffusers module -> (A, B)
        "transformer_blocks.0.attn.to_q": (mat(2, H), mat(H, 2)),
        "transformer_blocks.0.attn.to_v": (mat(3, H), mat(H, 3)),
        "transformer_blocks.1.attn.add_q_proj": (shared, mat(H, 4)),
        "transformer_blocks.1.attn.add_k_proj": (shared, mat(H, 4)),
        "transformer_blocks.1.attn.add_v_proj": (shared, mat(H, 4)),
        "single_transformer_blocks.1.attn.to_k": (mat(2, H), mat(H, 2)),
        "single_transformer_blocks.1.proj_mlp": (mat(1, H), mat(MLP, 1)),
        "single_transformer_blocks.0.proj_out": (mat(3, H + MLP), mat(H, 3)),
        "norm_out.linear": (mat(2, H), mat(2 * H, 2)),
        "x_embedder": (mat(4, IN_CH), mat(H, 4)),
    }
    config = {"r": 2, "lora_alpha": 4.0,
              "rank_pattern": {p: a[0][0] for p, (a, _) in parts.items() if a[0][0] != 2},
              "alpha_pattern": {"transformer_blocks.0.attn.to_v": 1.5, "proj_mlp": 3.0, "x_emb.*": 6.0}}
    tensors = {}
    for path, (a, b) in parts.items():
        tensors[f"transformer.{path}.lora_A.weight"] = a
        tensors[f"transformer.{path}.lora_B.weight"] = b
    src, dst = os.path.join(tmp, "diffusers.safetensors"), os.path.join(tmp, "imported.safetensors")
    st_write(src, tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(
        {f"transformer.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)})
    if not convert(tool, src, "canonical", dst):
        return
    got = canonical_deltas(*st_read(dst))
    expected = {}
    for module, n_in, n_out in flux_linears():
        mparts, swapped = diffusers_parts(module, n_in, n_out)
        if not any(p in parts for p, _ in mparts):
            continue
        rows = []
        for path, n_rows in mparts:
            if path in parts:
                a, b = parts[path]
                rows += delta(a, b, peft_scaling(config, path, a[0][0]))
            else:
                rows += [[0.0] * n_in for _ in range(n_rows)]
        expected[module] = rows[len(rows) // 2:] + rows[:len(rows) // 2] if swapped else rows
    check(sorted(got) == sorted(expected), f"import: modules {sorted(got)} vs {sorted(expected)}")
    for module, rows in expected.items():
        if module in got:
            compare(f"import {module}", got[module], rows)


def main():
    if len(sys.argv) != 2:
        print("usage: peft_crosscheck.py LORA_CONVERT")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        test_export(sys.argv[1], tmp)
        test_import(sys.argv[1], tmp)
    print(f"{results['passed']} passed, {results['failed']} failed")
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
