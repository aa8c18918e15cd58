"""Hostile uploads for tests and benchmarks: decompression bombs and lying headers.

Built without ever holding the decoded image: the PNG bomb's rows are compressed as they are
generated.
"""

from __future__ import annotations

import base64
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A VALID 1-bit grayscale PNG of ``width`` x ``height`` all-black pixels.

    Decoded by Pillow it becomes a ``width * height`` byte image (400 MB at 20000 x 20000); the
    file is ~50 KB, because zlib squeezes the all-zero rows about 1000:1.
    """
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def png_header_only(width: int = 20000, height: int = 20000) -> bytes:
    """An RGB PNG header declaring a huge size, followed by almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def jpeg_header_only(width: int = 65000, height: int = 65000) -> bytes:
    """A baseline JPEG whose SOF0 declares ``width`` x ``height`` and has no scan data."""
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + sof


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
