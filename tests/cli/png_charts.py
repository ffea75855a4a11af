#!/usr/bin/env python3
"""Counts coloured pixels (chart lines, not the grey of axes, grids and text) inside boxes of a
PNG screenshot. Usage: png_charts.py SHOT.png BOXES.json MIN_PIXELS
BOXES.json is a list of {"id", "x", "y", "w", "h"} in CSS pixels (device scale 1). Prints one
line per box; exits 1 when any box has fewer than MIN_PIXELS coloured pixels. Decodes 8-bit
RGB/RGBA non-interlaced PNGs (what Chromium writes) with the standard library only."""
import json
import struct
import sys
import zlib


def decode(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or color not in (2, 6) or interlace:
                raise SystemExit(f"{path}: unsupported PNG (depth {depth}, colour type {color})")
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return width, height, bpp, rows


def main(shot, boxes_path, minimum):
    width, height, bpp, rows = decode(shot)
    boxes = json.load(open(boxes_path))
    if not boxes:
        print("no chart boxes")
        return 1
    bad = 0
    for box in boxes:
        x0, y0 = max(0, int(box["x"])), max(0, int(box["y"]))
        x1, y1 = min(width, int(box["x"] + box["w"])), min(height, int(box["y"] + box["h"]))
        coloured = 0
        for y in range(y0, y1):
            line = rows[y]
            for x in range(x0, x1):
                r, g, b = line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]
                if max(r, g, b) - min(r, g, b) > 80:
                    coloured += 1
        ok = coloured >= minimum and y1 > y0 and x1 > x0
        bad += not ok
        print(f"{box['id']}: {coloured} coloured pixels in {x1 - x0}x{y1 - y0}{'' if ok else '  <- too few'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
