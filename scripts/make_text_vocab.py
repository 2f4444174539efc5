#!/usr/bin/env python3
"""Regenerates the vocabularies built into flashlora (models/text/vocab) from two PyPI packages.

  CLIP: open-clip-torch 3.3.0 (wheel), member open_clip/bpe_simple_vocab_16e6.txt.gz (OpenAI's
        CLIP BPE merges, MIT). Kept: the header line and the 48,894 merges the 49,408-token
        vocabulary uses -> clip_merges.txt.
  T5:   stable-diffusion-cpp-python 0.4.7 (sdist), the byte array t5_tokenizer_json_str in
        vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp: the Hugging Face
        tokenizer.json of google/t5-v1_1-xxl (vocabulary Apache-2.0, Google; container MIT).
        Kept: the 32,000 SentencePiece pieces with their scores and types and the precompiled
        nmt_nfkc character map -> t5_vocab.bin (layout below); <extra_id_N> are derived in code.

Every input and output is checked against the sha256 recorded here and in models/text/vocab/README.md.
No code of either package is used or kept.

  python3 scripts/make_text_vocab.py [--download-dir DIR] [--keep-sources]

--download-dir reuses archives already fetched with
  pip download --no-deps open-clip-torch==3.3.0
  pip download --no-deps --no-binary :all: --no-build-isolation stable-diffusion-cpp-python==0.4.7
(the second needs scikit-build-core installed); without it the script runs those commands into a
temporary directory. --keep-sources also writes the original tokenizer.json and merges file next
to the archives (tests/reference/make_text_fixtures.py reads them).

t5_vocab.bin (little-endian):
  8 bytes  "FLT5VOC1"
  u32      n pieces, u32 n extra ids, u32 bytes of piece text, u32 bytes of character map
  f32[n]   scores
  u8[n]    SentencePiece types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
  pieces   UTF-8, each followed by a NUL
  charsmap the precompiled_charsmap bytes (u32 trie size, double-array units, NUL-separated strings)
"""

import argparse
import base64
import gzip
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile

WHEEL = ("open_clip_torch-3.3.0-py3-none-any.whl", "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce")
SDIST = ("stable_diffusion_cpp_python-0.4.7.tar.gz", "998d1957260dd5ae4e18a8acc0c14b0a8757aaa9f96515197b6d5bbf46df9282")
MERGES_GZ_SHA = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
MERGES_CUT_SHA = "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"
T5_JSON_SHA = "fe2ebbbbde2985be723e0ce18217853e4020c5e9d35bd07be2c27ab9d3ead57a"
HPP = "stable_diffusion_cpp_python-0.4.7/vendor/stable-diffusion.cpp/src/tokenizers/vocab/clip_t5.hpp"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "text", "vocab")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def need(data, want, what):
    got = sha(data)
    if got != want:
        sys.exit(f"{what}: sha256 {got}, expected {want}")


def fetch(directory):
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", directory]
    if not os.path.exists(os.path.join(directory, WHEEL[0])):
        subprocess.run(pip + ["open-clip-torch==3.3.0"], check=True)
    if not os.path.exists(os.path.join(directory, SDIST[0])):
        subprocess.run(pip + ["--no-binary", ":all:", "--no-build-isolation", "stable-diffusion-cpp-python==0.4.7"],
                       check=True)


def clip_merges(directory):
    wheel = open(os.path.join(directory, WHEEL[0]), "rb").read()
    need(wheel, WHEEL[1], WHEEL[0])
    gz = zipfile.ZipFile(io.BytesIO(wheel)).read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    need(gz, MERGES_GZ_SHA, "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(gz).split(b"\n")
    cut = b"\n".join([b"#version: 0.2"] + lines[1:48895]) + b"\n"
    need(cut, MERGES_CUT_SHA, "the 48,895-line merges")
    return cut, gzip.decompress(gz)


def t5_json(directory):
    sdist = open(os.path.join(directory, SDIST[0]), "rb").read()
    need(sdist, SDIST[1], SDIST[0])
    with tarfile.open(fileobj=io.BytesIO(sdist), mode="r:gz") as tar:
        src = tar.extractfile(HPP).read()
    start = src.index(b"{", src.index(b"t5_tokenizer_json_str"))
    end = src.index(b"}", start)
    data = bytes(int(h, 16) for h in re.findall(rb"0x([0-9a-fA-F]{2})", src[start:end]))
    need(data, T5_JSON_SHA, "T5 tokenizer.json")
    return data


def t5_blob(data):
    doc = json.loads(data)
    model = doc["model"]
    assert model["type"] == "Unigram" and model["unk_id"] == 2, model["type"]
    vocab = model["vocab"]
    assert len(vocab) == 32100
    pieces, scores = [p for p, _ in vocab[:32000]], [s for _, s in vocab[:32000]]
    for k, (piece, score) in enumerate(vocab[32000:]):
        assert piece == f"<extra_id_{99 - k}>" and score == 0.0, piece
    types = [3, 3, 2] + [1] * (len(pieces) - 3)  # <pad>, </s> control; <unk> unknown
    assert pieces[:3] == ["<pad>", "</s>", "<unk>"]
    norm = [n for n in doc["normalizer"]["normalizers"] if n["type"] == "Precompiled"][0]
    charsmap = base64.b64decode(norm["precompiled_charsmap"])
    text = b"".join(p.encode("utf-8") + b"\0" for p in pieces)
    head = b"FLT5VOC1" + struct.pack("<4I", len(pieces), 100, len(text), len(charsmap))
    return head + struct.pack(f"<{len(scores)}f", *scores) + bytes(types) + text + charsmap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--download-dir")
    ap.add_argument("--keep-sources", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.download_dir or tmp
        fetch(directory)
        merges, full_merges = clip_merges(directory)
        t5 = t5_json(directory)
        if args.keep_sources:
            open(os.path.join(directory, "t5_tokenizer.json"), "wb").write(t5)
            open(os.path.join(directory, "bpe_simple_vocab_16e6.txt"), "wb").write(full_merges)
        blob = t5_blob(t5)
        os.makedirs(OUT, exist_ok=True)
        for name, content in (("clip_merges.txt", merges), ("t5_vocab.bin", blob)):
            with open(os.path.join(OUT, name), "wb") as f:
                f.write(content)
            print(f"{name}: {len(content)} bytes, sha256 {sha(content)}")


if __name__ == "__main__":
    main()
