#!/usr/bin/env python3
"""make_safetensors_corpus.py — writes the committed safetensors corpus (tests/fuzz/corpus/safetensors).

Each malformed file exercises one rejection rule of the reader (core/safetensors.c); a few valid
files give the fuzzer good seeds. EXPECTED.txt maps every file to a fragment of the error message
the reader must produce, or to "(valid)" for files that must open; tests/safetensors replays it.

Usage: python3 tests/fuzz/make_safetensors_corpus.py [OUTPUT_DIR]
(standard library only; the output is deterministic, so rerunning it leaves the tree unchanged).
Files whose names start with "crash-" are inputs the fuzzer once found; they are kept as they are.
"""
import json
import os
import struct
import sys

VALID = "(valid)"


def frame(header, data=b"", length=None, pad=True):
    """8-byte little-endian length, header bytes (space-padded to 8-byte alignment), data."""
    if isinstance(header, (dict, list)):
        header = json.dumps(header, separators=(",", ":")).encode()
    elif isinstance(header, str):
        header = header.encode()
    if pad:
        header += b" " * (-(len(header) + 8) % 8)
    n = len(header) if length is None else length
    return struct.pack("<Q", n) + header + data


def tensor(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def cases():
    """(file name, bytes, expected message fragment or VALID)."""
    one = tensor("F32", [2], 0, 8)
    data8 = f32(1.0, 2.0)

    # --- valid seeds ---
    yield ("valid_f32_metadata.safetensors",
           frame({"__metadata__": {"format": "pt", "rank": "16"},
                  "lora.down.weight": tensor("F32", [2, 3], 0, 24)}, f32(*range(6))), VALID)
    yield ("valid_bf16_scalar.safetensors",
           frame({"w": tensor("F32", [], 0, 4), "b": tensor("BF16", [4], 4, 12)},
                 f32(0.5) + bytes([0x80, 0x3f, 0x00, 0x40, 0x40, 0x40, 0x80, 0x40])), VALID)
    yield ("valid_mixed_dtypes.safetensors",
           frame({"__metadata__": {"note": "readable but not computable dtypes"},
                  "i64": tensor("I64", [1], 0, 8), "f16": tensor("F16", [2], 8, 12),
                  "u8": tensor("U8", [3], 12, 15), "flag": tensor("BOOL", [1], 15, 16),
                  "empty": tensor("F32", [0, 3], 16, 16)}, bytes(range(16))), VALID)
    yield ("valid_gap_between_tensors.safetensors",
           frame({"a": tensor("F32", [1], 0, 4), "b": tensor("F32", [1], 8, 12)}, bytes(12)), VALID)
    yield ("valid_no_tensors.safetensors", frame({}), VALID)
    yield ("valid_metadata_only.safetensors", frame({"__metadata__": {"k": "v", "": "empty key"}}), VALID)

    # --- sizes and the header length ---
    yield ("empty_file.safetensors", b"", "file is 0 bytes")
    yield ("seven_bytes.safetensors", b"\x02\x00\x00\x00\x00\x00\x00", "file is 7 bytes")
    yield ("header_length_zero.safetensors", frame("{}", length=0), "header length is 0")
    yield ("header_length_huge.safetensors", frame("{}", length=0xFFFFFFFFFFFFFFFF),
           "exceeds the limit of 104857600 bytes")
    yield ("header_length_over_limit.safetensors", frame("{}", length=(100 << 20) + 1),
           "header length 104857601 exceeds the limit")
    yield ("header_length_past_end.safetensors", frame("{}", length=4096),
           "header length 4096 exceeds the 8 bytes after the length field")
    # --- JSON syntax and shape of the top level ---
    yield ("not_json.safetensors", frame("hello, world"), "header is not valid JSON")
    yield ("json_truncated.safetensors", frame('{"w":{"dtype":"F32","sha', pad=False),
           "header is not valid JSON")
    yield ("json_array_top_level.safetensors", frame("[]"), "header is not a JSON object (got an array)")
    yield ("json_string_top_level.safetensors", frame('"weights"'), "header is not valid JSON")
    yield ("json_trailing_garbage.safetensors", frame('{} {}', pad=False), "header is not valid JSON")
    yield ("json_nul_padding.safetensors", frame(b"{}\x00\x00\x00\x00\x00\x00", pad=False),
           "header is not valid JSON")
    yield ("duplicate_keys.safetensors",
           frame('{"w":%s,"w":%s}' % (json.dumps(one), json.dumps(one)), data8), "duplicate object key")
    yield ("deep_nesting.safetensors", frame('{"__metadata__":' + "[" * 5000 + "]" * 5000 + "}"),
           "maximum parsing depth")
    yield ("integer_too_big.safetensors",
           frame('{"w":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}}', data8),
           "too big integer")
    yield ("nul_in_name.safetensors", frame('{"a\\u0000b":%s}' % json.dumps(one), data8),
           "NUL byte in object key")
    yield ("raw_nul_in_name.safetensors", frame(b'{"a\x00b":' + json.dumps(one).encode() + b"}", data8),
           "control character 0x0")
    yield ("invalid_utf8_name.safetensors", frame(b'{"\xff\xfe":' + json.dumps(one).encode() + b"}", data8),
           "unable to decode byte 0xff")

    # --- names and entries ---
    yield ("empty_name.safetensors", frame({"": one}, data8), "a tensor has an empty name")
    yield ("name_too_long.safetensors", frame({"n" * 1025: one}, data8), "longer than the limit of 1024")
    yield ("newline_in_name.safetensors", frame({"a\nb": tensor("F31", [2], 0, 8)}, data8),
           "tensor 'a\\x0ab': unknown dtype 'F31'")
    yield ("entry_not_object.safetensors", frame({"w": [0, 8]}, data8),
           "tensor 'w': expected an object with dtype, shape and data_offsets, got an array")
    yield ("missing_dtype.safetensors", frame({"w": {"shape": [2], "data_offsets": [0, 8]}}, data8),
           "tensor 'w': missing field 'dtype'")
    yield ("missing_data_offsets.safetensors", frame({"w": {"dtype": "F32", "shape": [2]}}, data8),
           "tensor 'w': missing field 'data_offsets'")
    yield ("extra_field.safetensors", frame({"w": dict(one, layout="strided")}, data8),
           "tensor 'w': unexpected field 'layout'")

    # --- dtype and shape ---
    yield ("unknown_dtype.safetensors", frame({"w": tensor("F31", [2], 0, 8)}, data8), "unknown dtype 'F31'")
    yield ("dtype_not_string.safetensors", frame({"w": tensor(4, [2], 0, 8)}, data8),
           "dtype must be a string, got an integer")
    yield ("shape_not_array.safetensors", frame({"w": tensor("F32", 2, 0, 8)}, data8),
           "shape must be an array of non-negative integers, got an integer")
    yield ("shape_negative.safetensors", frame({"w": tensor("F32", [2, -3], 0, 8)}, data8),
           "tensor 'w': shape[1] is -3")
    yield ("shape_real_number.safetensors", frame({"w": tensor("F32", [2.0], 0, 8)}, data8),
           "shape[0] is a real number")
    yield ("shape_overflow.safetensors", frame({"w": tensor("F32", [1 << 32, 1 << 32], 0, 8)}, data8),
           "shape [4294967296, 4294967296] of F32 overflows a 64-bit byte count")
    yield ("shape_overflow_with_zero.safetensors",
           frame({"w": tensor("BF16", [0, 1 << 40, 1 << 40], 0, 0)}), "overflows a 64-bit byte count")
    yield ("shape_too_many_dims.safetensors", frame({"w": tensor("F32", [1] * 9, 0, 4)}, f32(1.0)),
           "shape has 9 dimensions; at most 8")

    # --- data_offsets ---
    yield ("offsets_reversed.safetensors", frame({"w": tensor("F32", [1], 8, 4)}, data8),
           "data_offsets [8, 4] end before they begin")
    yield ("offsets_past_end.safetensors", frame({"w": tensor("F32", [250], 0, 1000)}, data8),
           "data_offsets [0, 1000] end past the 8-byte data buffer")
    yield ("offsets_negative.safetensors", frame({"w": tensor("F32", [2], -4, 4)}, data8),
           "data_offsets [-4, 4] must be non-negative")
    yield ("offsets_one_element.safetensors",
           frame({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8]}}, data8),
           "data_offsets must be an array of two non-negative integers")
    yield ("byte_count_mismatch.safetensors", frame({"w": tensor("F32", [4], 0, 12)}, bytes(16)),
           "data_offsets [0, 12] hold 12 bytes but shape [4] of F32 needs 16")
    yield ("byte_count_mismatch_flux.safetensors",
           frame({"double_blocks.0.img_attn.qkv.weight": tensor("BF16", [9216, 3072], 0, 100)}, bytes(100)),
           "tensor 'double_blocks.0.img_attn.qkv.weight': data_offsets [0, 100] hold 100 bytes but shape "
           "[9216, 3072] of BF16 needs 56623104")
    yield ("overlapping_tensors.safetensors",
           frame({"a": tensor("F32", [4], 0, 16), "b": tensor("F32", [4], 8, 24)}, bytes(24)),
           "tensors 'a' [0, 16] and 'b' [8, 24] overlap")
    yield ("overlap_contained.safetensors",
           frame({"big": tensor("U8", [32], 0, 32), "a": tensor("U8", [4], 4, 8), "b": tensor("U8", [4], 20, 24)},
                 bytes(32)), "tensors 'big' [0, 32] and 'a' [4, 8] overlap")

    # --- metadata ---
    yield ("metadata_non_string.safetensors", frame({"__metadata__": {"rank": 16}}),
           "__metadata__ 'rank': value must be a string, got an integer")
    yield ("metadata_not_object.safetensors", frame({"__metadata__": ["a", "b"]}),
           "__metadata__ must be an object of strings, got an array")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "safetensors")
    os.makedirs(out, exist_ok=True)
    lines = [
        "# Expected outcome of opening each corpus file with fl_safetensors_open: a fragment of the",
        "# error message, or (valid). Generated by tests/fuzz/make_safetensors_corpus.py; fuzzer",
        "# finds (crash-*) are appended by hand. Format: NAME<TAB>FRAGMENT.",
    ]
    names = set()
    for name, blob, expect in cases():
        assert name not in names, name
        names.add(name)
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)
        lines.append("%s\t%s" % (name, expect))
    # Keep entries for fuzzer finds that were committed alongside the generated files.
    expected_path = os.path.join(out, "EXPECTED.txt")
    if os.path.exists(expected_path):
        with open(expected_path, encoding="utf-8") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.startswith("crash-"):
                    lines.append(line)
    with open(expected_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %d files to %s" % (len(names), out))


if __name__ == "__main__":
    main()
