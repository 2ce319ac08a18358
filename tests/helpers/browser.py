"""Debian's chromium, headless, for pages backupd serves: the DOM it built, a screenshot, and
a tiny PNG reader (zlib only, no image library) to tell a rendered page from a blank one.
``CHROMIUM`` is None where chromium is not installed (tests skip, naming the reason)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

CHROMIUM = shutil.which("chromium")
WINDOW = "1000,1400"
# Quiet, offline, no sandbox (tests may run as root in a container).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WINDOW}"]
TIMEOUT_SECONDS = 90


def _run(profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None, "chromium is not installed"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=TIMEOUT_SECONDS, check=False)


def dump_dom(url: str, profile: Path) -> str:
    proc = _run(profile, "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode(errors="replace")


def screenshot(url: str, profile: Path, destination: Path) -> Path:
    proc = _run(profile, f"--screenshot={destination}", url)
    assert destination.is_file(), proc.stderr.decode(errors="replace")[-2000:]
    return destination


def non_white_pixels(png: Path, threshold: int = 240) -> int:
    """Pixels with any colour channel below ``threshold`` in an 8-bit RGB(A) PNG."""
    width, height, channels, rows = _decode(png.read_bytes())
    count = 0
    for row in rows:
        for x in range(width):
            pixel = row[x * channels:x * channels + 3]
            if min(pixel) < threshold:
                count += 1
    assert len(rows) == height
    return count


def _decode(data: bytes) -> tuple[int, int, int, list[bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat = 8, bytearray()
    width = height = channels = 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, "an unusual PNG"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        _unfilter(kind, line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def _unfilter(kind: int, line: bytearray, up: bytearray, step: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - step] if i >= step else 0
        above = up[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + above) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + above) // 2) & 0xFF
        else:
            corner = up[i - step] if i >= step else 0
            estimate = left + above - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - above), abs(estimate - corner)
            best = left if pa <= pb and pa <= pc else above if pb <= pc else corner
            line[i] = (line[i] + best) & 0xFF
