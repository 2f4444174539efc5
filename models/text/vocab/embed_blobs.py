#!/usr/bin/env python3
"""Build step: turns the vocabulary files of this folder into a C source that defines them as
byte arrays (symbol, size), so the flashlora binary carries its tokenizers' vocabularies.

  embed_blobs.py OUT.c SYMBOL=FILE [SYMBOL=FILE ...]
"""

import sys


def main():
    out, pairs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    lines = ["/* Generated at build time by models/text/vocab/embed_blobs.py from the files of",
             " * models/text/vocab: do not edit. */", "#include <stddef.h>", ""]
    for symbol, path in pairs:
        data = open(path, "rb").read()
        lines.append(f"const unsigned char {symbol}[{len(data) + 1}] = {{")
        for i in range(0, len(data), 32):
            lines.append(",".join(str(b) for b in data[i:i + 32]) + ",")
        lines.append("0};")
        lines.append(f"const size_t {symbol}_size = {len(data)};")
        lines.append("")
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
