"""Schemathesis hooks of the contract test (loaded through SCHEMATHESIS_HOOKS): realistic bodies
for the two upload media types of serve/openapi.yaml, which no JSON Schema can describe.

  application/vnd.safetensors   a canonical LoRA for the model named by FLASHLORA_CONTRACT_MODEL
                                (random rank, modules and weights), as POST /v1/adapters takes it
  application/zip, application/x-tar, application/gzip
                                an image set of 4-6 small PNGs (zip, tar, tar.gz), as
                                POST /v1/trainings takes it

Everything else schemathesis generates from the description alone. Standard library and
hypothesis only (hypothesis comes with schemathesis)."""

import io
import json
import os
import struct
import tarfile
import zipfile
import zlib

import schemathesis
from hypothesis import strategies as st


def _header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


_MODEL = os.environ.get("FLASHLORA_CONTRACT_MODEL", "")
_LINEARS = []
if _MODEL:
    _h = _header(_MODEL)
    _LINEARS = sorted((k[:-len(".weight")], tuple(v["shape"])) for k, v in _h.items()
                      if k.endswith(".weight") and isinstance(v, dict) and len(v["shape"]) == 2 and "blocks" in k)


def _lora(rank, modules, seed):
    tensors, blobs, offset = {}, [], 0
    x = seed & 0xFFFFFFFF
    for name, (out_dim, in_dim) in modules:
        for suffix, shape in ((".lora_A.weight", [rank, in_dim]), (".lora_B.weight", [out_dim, rank])):
            values = []
            for _ in range(shape[0] * shape[1]):
                x = (1103515245 * x + 12345) & 0x7FFFFFFF
                values.append((x / 0x7FFFFFFF - 0.5) * 0.1)
            blob = struct.pack("<%df" % len(values), *values)
            tensors[name + suffix] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
    tensors["__metadata__"] = {"format": "canonical", "alpha": str(rank), "rank": str(rank)}
    text = json.dumps(tensors).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@st.composite
def _adapters(draw):
    if not _LINEARS:
        return b"not an adapter: FLASHLORA_CONTRACT_MODEL is not set"
    rank = draw(st.integers(1, 4))
    modules = draw(st.lists(st.sampled_from(_LINEARS), min_size=1, max_size=4, unique=True))
    return _lora(rank, modules, draw(st.integers(0, 2**31)))


def _png(width, height, seed):
    rows = b"".join(b"\x00" + bytes((seed * 7 + x * 13 + y * 29 + c * 5) & 0xFF
                                     for x in range(width) for c in range(3)) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


_images = st.lists(st.tuples(st.integers(8, 32), st.integers(8, 32), st.integers(0, 255)), min_size=4, max_size=6)


@st.composite
def _zip(draw):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i, (w, h, seed) in enumerate(draw(_images)):
            z.writestr("img%d.png" % i, _png(w, h, seed))
    return out.getvalue()


def _tar_bytes(images, mode):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as t:
        for i, (w, h, seed) in enumerate(images):
            data = _png(w, h, seed)
            info = tarfile.TarInfo("img%d.png" % i)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


schemathesis.openapi.media_type("application/vnd.safetensors", _adapters())
schemathesis.openapi.media_type("application/zip", _zip())
schemathesis.openapi.media_type("application/x-tar", _images.map(lambda i: _tar_bytes(i, "w")))
schemathesis.openapi.media_type("application/gzip", _images.map(lambda i: _tar_bytes(i, "w:gz")))


# Schemathesis 4.32.5's coverage phase builds its one multipart body with custom part strategies by
# giving every other required field an empty string, whatever the field's schema says (a training's
# trigger_word must be one word, minLength 1), and then counts that body as valid data. Fill such a
# field with a valid value instead (the forms here have two such fields: a training's trigger word
# and an evaluation's adapter); the other phases generate forms from the schema as usual.
_FORM_FIELDS = {"trigger_word": "sks", "adapters": "logo"}
def _patch_coverage_forms():
    from schemathesis.specs.openapi.coverage import _operation as coverage

    original = coverage._generate_multipart_body_from_custom_strategies

    def generate(body):
        out = original(body)
        if out is None:
            return out
        result, content_types = out
        for name in (body.resolved_schema or {}).get("required", []):
            if result.get(name) == "" and name in _FORM_FIELDS:
                result[name] = _FORM_FIELDS[name]
        return result, content_types

    coverage._generate_multipart_body_from_custom_strategies = generate


_patch_coverage_forms()
