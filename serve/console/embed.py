#!/usr/bin/env python3
"""Build step: compiles the web console's files (this folder's .html, .css, .js and .svg) into a C
source, a table of {URL path, content type, bytes}, so `flashlora serve` carries its console and
needs nothing installed beside it. index.html is served at "/", every other file at
"/console/<name>" (serve/console.h).

  embed.py OUT.c FILE [FILE ...]
"""

import os
import sys

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    lines = ["/* Generated at build time by serve/console/embed.py from the files of serve/console:",
             " * do not edit. */", '#include "serve/console.h"', ""]
    table = []
    for i, path in enumerate(sorted(paths, key=os.path.basename)):
        name = os.path.basename(path)
        ext = os.path.splitext(name)[1]
        if ext not in TYPES:
            sys.exit("embed.py: %s: no content type for %s files" % (path, ext))
        data = open(path, "rb").read()
        lines.append("static const unsigned char file%d[%d] = {" % (i, len(data) + 1))
        for k in range(0, len(data), 32):
            lines.append(",".join(str(b) for b in data[k:k + 32]) + ",")
        lines.append("0};")
        url = "/" if name == "index.html" else "/console/" + name
        table.append('    {"%s", "%s", file%d, %d},' % (url, TYPES[ext], i, len(data)))
    lines.append("")
    lines.append("const fl_console_file fl_console_files[] = {")
    lines += table
    lines.append("    {0, 0, 0, 0},")
    lines.append("};")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
