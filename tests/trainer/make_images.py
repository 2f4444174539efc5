"""Draws a small synthetic subject set as PNG files (standard library only): a red disc with a
yellow square on blue, at shifted positions, plus one sidecar caption.
   make_images.py DIR [COUNT]"""

import os
import struct
import sys
import zlib


def write_png(path, width, height, rgb):
    raw = b"".join(b"\x00" + bytes(rgb[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))


def main():
    out = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    os.makedirs(out, exist_ok=True)
    size = 32
    for i in range(count):
        dx, dy = i % 3 - 1, i // 3
        rgb = []
        for y in range(size):
            for x in range(size):
                r, g, b = 30, 50, 200
                if (x - 12 - 2 * dx) ** 2 + (y - 14 - 2 * dy) ** 2 <= 40:
                    r, g, b = 230, 30, 30
                if 18 + 2 * dx <= x < 26 + 2 * dx and 6 + 2 * dy <= y < 14 + 2 * dy:
                    r, g, b = 240, 220, 20
                rgb += [r, g, b]
        write_png(os.path.join(out, f"subject{i}.png"), size, size, rgb)
    with open(os.path.join(out, "subject0.txt"), "w") as f:
        f.write("[trigger] mascot on a blue background\n")


if __name__ == "__main__":
    main()
