#!/usr/bin/env python3
"""Writes tests/datasets/corpus/: good and hostile inputs for the image-set loader.

Run from anywhere: `python3 tests/datasets/make_corpus.py`. Standard library only (zlib and
struct for the image formats, zipfile and tarfile for the archives); the output is byte-for-byte
reproducible (fixed timestamps, no owner names). Alongside the files it writes EXPECTED.txt, one
tab-separated line per expectation, which tests/datasets/test_corpus.c checks:

    <file> ok        -       -          the file loads with no rejection
    <file> rejected  <name>  <fragment> the set loads; <name> is refused with a reason containing <fragment>
    <file> error     <code>  <fragment> loading fails with that fl_error code name and message fragment

Files that are not archives are loaded inside a folder together with the four good_*.png images.
Two hostile inputs are built by the test itself instead of being committed: an archive of 20 000
tiny entries (tens of megabytes as a tar, ~2 MB as a zip) and the URL cases.
"""
import io
import os
import struct
import tarfile
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# ---- image writers ---------------------------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width, height, color_type, bit_depth, rows, plte=None, idat=None):
    """rows: one bytes object per row, without the filter byte."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"".join(b"\x00" + r for r in rows), 9)
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    if plte is not None:
        out += png_chunk(b"PLTE", plte)
    return out + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def good_rgb_png():  # 8x6, R = 30x, G = 40y, B = 255 - 20x - 10y
    return png(8, 6, 2, 8, [bytes(v for x in range(8) for v in (30 * x, 40 * y, 255 - 20 * x - 10 * y))
                            for y in range(6)])


def good_rgba_png():  # 4x4, (255, 0, 100) with alpha 85x
    return png(4, 4, 6, 8, [bytes(v for x in range(4) for v in (255, 0, 100, 85 * x)) for _ in range(4)])


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def good_palette_png():  # 4x2, index (x + 2y) % 4
    plte = bytes(c for rgb in PALETTE for c in rgb)
    return png(4, 2, 3, 8, [bytes((x + 2 * y) % 4 for x in range(4)) for y in range(2)], plte=plte)


def good_gray16_png():  # 4x4 16-bit gray, value k * 257 with k = 16 (4x + y): exactly k in 8 bits
    return png(4, 4, 0, 16, [b"".join(struct.pack(">H", 16 * (4 * x + y) * 257) for x in range(4)) for y in range(4)])


def noise_png(size, seed):
    state = seed
    rows = []
    for _ in range(size):
        row = bytearray()
        for _ in range(size * 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            row.append(state >> 23)
        rows.append(bytes(row))
    return png(size, size, 2, 8, rows)


def good_bmp():  # 5x3, 24-bit bottom-up, R = 50x, G = 100y, B = 7
    width, height = 5, 3
    stride = (width * 3 + 3) // 4 * 4
    pixels = b""
    for y in reversed(range(height)):
        row = b"".join(bytes((7, 100 * y, 50 * x)) for x in range(width))
        pixels += row + b"\x00" * (stride - len(row))
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


def good_gif():  # 4x4, global palette PALETTE, index (x + y) % 4
    width = height = 4
    indices = [(x + y) % 4 for y in range(height) for x in range(width)]
    # LZW without compression: 3-bit codes, a clear code before every two pixels keeps the width fixed.
    codes = []
    for i, idx in enumerate(indices):
        if i % 2 == 0:
            codes.append(4)
        codes.append(idx)
    codes.append(5)
    acc = nbits = 0
    data = bytearray()
    for code in codes:
        acc |= code << nbits
        nbits += 3
        while nbits >= 8:
            data.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        data.append(acc & 0xFF)
    out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x81, 0, 0) + bytes(c for rgb in PALETTE for c in rgb)
    out += b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02"
    out += bytes([len(data)]) + bytes(data) + b"\x00;"
    return out


def huffman_codes(bits, values):
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[values[k]] = (code, length)
            k += 1
            code += 1
        code <<= 1
    return codes


def good_jpeg(width=16, height=16, rgb=(200, 60, 30)):
    """Baseline JPEG of one solid color: 3 components without subsampling, quantisation 1, and every
    block DC-only (the AC table holds just end-of-block)."""
    r, g, b = rgb
    ycc = [round(0.299 * r + 0.587 * g + 0.114 * b),
           round(-0.168736 * r - 0.331264 * g + 0.5 * b + 128),
           round(0.5 * r - 0.418688 * g - 0.081312 * b + 128)]
    dc_bits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    dc_vals = list(range(12))
    ac_bits = [1] + [0] * 15
    dc_codes = huffman_codes(dc_bits, dc_vals)
    eob = huffman_codes(ac_bits, [0])[0]

    out = bytearray()
    acc = nbits = 0

    def put(value, length):
        nonlocal acc, nbits
        for i in reversed(range(length)):
            acc = (acc << 1) | ((value >> i) & 1)
            nbits += 1
            if nbits == 8:
                out.append(acc)
                if acc == 0xFF:
                    out.append(0)
                acc = nbits = 0

    previous = [0, 0, 0]
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    for _ in range(blocks):
        for c in range(3):
            dc = 8 * (ycc[c] - 128)
            diff = dc - previous[c]
            previous[c] = dc
            category = abs(diff).bit_length()
            put(*dc_codes[category])
            if category:
                put(diff if diff >= 0 else diff + (1 << category) - 1, category)
            put(*eob)
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)

    def segment(marker, payload):
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    jpg = b"\xff\xd8"
    jpg += segment(0xDB, b"\x00" + b"\x01" * 64)
    jpg += segment(0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"".join(bytes([i + 1, 0x11, 0]) for i in range(3)))
    jpg += segment(0xC4, b"\x00" + bytes(dc_bits) + bytes(dc_vals))
    jpg += segment(0xC4, b"\x10" + bytes(ac_bits) + b"\x00")
    jpg += segment(0xDA, b"\x03" + b"".join(bytes([i + 1, 0x00]) for i in range(3)) + b"\x00\x3f\x00")
    return jpg + bytes(out) + b"\xff\xd9"


# ---- archive writers -------------------------------------------------------------------------------

def zip_bytes(entries):
    """entries: (name, data) or (name, data, unix_mode)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry[0], date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = entry[2] if len(entry) > 2 else 0o100644
            info.external_attr = mode << 16
            info.create_system = 3
            zf.writestr(info, entry[1])
    return buf.getvalue()


def tar_info(name, kind=tarfile.REGTYPE, size=0, **extra):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = ""
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def tar_bytes(entries):
    """entries: (name, data) for files or (TarInfo,) for special entries."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for entry in entries:
            if isinstance(entry[0], tarfile.TarInfo):
                tf.addfile(entry[0])
            else:
                tf.addfile(tar_info(entry[0], size=len(entry[1])), io.BytesIO(entry[1]))
    return buf.getvalue()


def gzip_bytes(data):
    import gzip
    return gzip.compress(data, compresslevel=9, mtime=0)


def write_bomb_zip(path, inflated=1 << 30):
    """One entry of `inflated` zero bytes, deflated (~1 MB); written in chunks, never whole in memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        info = zipfile.ZipInfo("bomb.png", date_time=ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o100644 << 16
        with zf.open(info, "w") as out:
            chunk = b"\x00" * (1 << 20)
            for _ in range(inflated // len(chunk)):
                out.write(chunk)


# ---- the corpus --------------------------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    files = {}
    expected = []

    good = {
        "good_rgb.png": good_rgb_png(),
        "good_rgba.png": good_rgba_png(),
        "good_palette.png": good_palette_png(),
        "good_gray16.png": good_gray16_png(),
    }
    files.update(good)
    files["good.bmp"] = good_bmp()
    files["good.gif"] = good_gif()
    files["good.jpg"] = good_jpeg()
    for name in list(files):
        expected.append((name, "ok", "-", "-"))
    four = sorted(good.items())  # the usable images inside each archive

    # Single hostile files (loaded in a folder beside the four good PNGs).
    noise = noise_png(64, 7)
    files["truncated.png"] = noise[: len(noise) // 2]
    expected.append(("truncated.png", "rejected", "truncated.png", "truncated or corrupt image (the file ends"))
    files["text.jpg"] = b"This is a text file, not a JPEG.\n"
    expected.append(("text.jpg", "rejected", "text.jpg", "not an image"))
    files["empty.png"] = b""
    expected.append(("empty.png", "rejected", "empty.png", "empty file"))
    files["header_30000.png"] = png(30000, 30000, 2, 8, None, idat=zlib.compress(b"\x00" * 64))
    expected.append(("header_30000.png", "rejected", "header_30000.png", "30000x30000 exceeds the 50 MP limit"))
    files["wide_13000.png"] = png(13000, 100, 2, 8, None, idat=zlib.compress(b"\x00" * 64))
    expected.append(("wide_13000.png", "rejected", "wide_13000.png", "13000x100 exceeds the 12000-pixel side limit"))
    # 16x16 pixels declared, but the IDAT inflates to 32 MiB: the decoder's memory cap stops it.
    files["idat_bomb.png"] = png(16, 16, 2, 8, None, idat=zlib.compress(b"\x00" * (32 << 20), 9))
    expected.append(("idat_bomb.png", "rejected", "idat_bomb.png", "truncated or corrupt image (stb: outofmem)"))
    files["fake.webp"] = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 24
    expected.append(("fake.webp", "rejected", "fake.webp", "unsupported image format (WebP"))

    # Archives: four good images plus the hostile entries.
    files["dotdot.zip"] = zip_bytes(four + [("../escape_probe.png", good["good_rgb.png"]),
                                            ("sub/../../escape_probe2.png", good["good_rgb.png"])])
    expected.append(("dotdot.zip", "rejected", "../escape_probe.png", "path escapes the archive (..)"))
    expected.append(("dotdot.zip", "rejected", "sub/../../escape_probe2.png", "path escapes the archive (..)"))
    files["dotdot.tar"] = tar_bytes(four + [("../escape_probe.png", good["good_rgb.png"])])
    expected.append(("dotdot.tar", "rejected", "../escape_probe.png", "path escapes the archive (..)"))
    files["absolute.zip"] = zip_bytes(four + [("/tmp/fl_corpus_abs_probe.png", good["good_rgb.png"])])
    expected.append(("absolute.zip", "rejected", "/tmp/fl_corpus_abs_probe.png", "absolute path refused"))
    files["absolute.tar"] = tar_bytes(four + [("/tmp/fl_corpus_abs_probe.png", good["good_rgb.png"])])
    expected.append(("absolute.tar", "rejected", "/tmp/fl_corpus_abs_probe.png", "absolute path refused"))
    files["symlink.tar"] = tar_bytes(four + [(tar_info("link.png", tarfile.SYMTYPE, linkname="/etc/passwd"),)])
    expected.append(("symlink.tar", "rejected", "link.png", "symbolic link refused"))
    files["symlink.zip"] = zip_bytes(four + [("link.png", b"/etc/passwd", 0o120777)])
    expected.append(("symlink.zip", "rejected", "link.png", "symbolic link refused"))
    files["hardlink.tar"] = tar_bytes(four + [(tar_info("hard.png", tarfile.LNKTYPE, linkname="good_rgb.png"),)])
    expected.append(("hardlink.tar", "rejected", "hard.png", "hard link refused"))
    files["device.tar"] = tar_bytes(four + [(tar_info("dev.png", tarfile.CHRTYPE, devmajor=1, devminor=3),),
                                            (tar_info("disk.png", tarfile.BLKTYPE, devmajor=8, devminor=0),),
                                            (tar_info("pipe.png", tarfile.FIFOTYPE),)])
    expected.append(("device.tar", "rejected", "dev.png", "device node refused"))
    expected.append(("device.tar", "rejected", "disk.png", "device node refused"))
    expected.append(("device.tar", "rejected", "pipe.png", "fifo refused"))
    files["duplicate.tar"] = tar_bytes(four + [("good_rgb.png", good["good_rgba.png"])])
    expected.append(("duplicate.tar", "rejected", "good_rgb.png", "duplicate name"))
    # Hidden files, folders, captions and an orphan caption: all quietly handled, nothing rejected.
    files["mixed.tar.gz"] = gzip_bytes(tar_bytes(
        [(tar_info("set", tarfile.DIRTYPE),)] + [("set/" + n, d) for n, d in four] +
        [("set/good_rgb.txt", b"a red and blue gradient, [trigger]  \n"),
         ("set/orphan.txt", b"no image has this stem"),
         ("set/.DS_Store", b"\x00\x00\x00\x01Bud1"),
         ("__MACOSX/set/._good_rgb.png", b"\x00\x05\x16\x07"),
         (".hidden/evil.png", b"")]))
    expected.append(("mixed.tar.gz", "ok", "-", "-"))
    files["nested.zip"] = zip_bytes(four + [("inner.png", zip_bytes([("x.png", good["good_rgb.png"])]))])
    expected.append(("nested.zip", "rejected", "inner.png", "unsupported image format (zip archive"))

    # Archives that must fail as a whole.
    files["empty.zip"] = zip_bytes([])
    expected.append(("empty.zip", "error", "invalid_input", "no images found (need at least 4)"))
    files["empty.tar"] = tar_bytes([])
    expected.append(("empty.tar", "error", "invalid_input", "no images found (need at least 4)"))
    files["zero_bytes.tar.gz"] = b""
    expected.append(("zero_bytes.tar.gz", "error", "invalid_input", "empty archive"))
    files["not_archive.zip"] = b"PKnot really a zip archive, just text\n" * 4
    expected.append(("not_archive.zip", "error", "invalid_input", "not a zip or tar archive"))
    files["too_few.zip"] = zip_bytes(four[:2] + [("broken.png", noise[:100])])
    expected.append(("too_few.zip", "error", "invalid_input",
                     "only 2 usable images (need at least 4); rejected: broken.png: truncated or corrupt image"))
    big = [("img%d.png" % i, noise_png(48, 100 + i)) for i in range(6)]
    whole = gzip_bytes(tar_bytes(big))
    files["truncated.tar.gz"] = whole[: len(whole) * 6 // 10]
    expected.append(("truncated.tar.gz", "error", "invalid_input", "corrupt"))
    expected.append(("bomb.zip", "error", "invalid_input", "bomb.png: larger than the 25 MiB per-file limit"))

    for name, data in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    write_bomb_zip(os.path.join(OUT, "bomb.zip"))

    with open(os.path.join(OUT, "EXPECTED.txt"), "w") as f:
        f.write("# file\toutcome\tcode-or-entry\tfragment (written by make_corpus.py)\n")
        for row in expected:
            f.write("\t".join(row) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print("wrote %d files (%d bytes) to %s" % (len(os.listdir(OUT)), total, OUT))


if __name__ == "__main__":
    main()
