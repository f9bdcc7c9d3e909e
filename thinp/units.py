"""Sizes as dmsetup and LVM write them, and dm-thin's block-size rule.

``parse_size("64KiB")``, ``parse_size("64k")``, ``parse_size("10G")`` and
``parse_size("1.5TiB")`` all use binary units (k = KiB = 1024), as LVM does.
A bare number is bytes.  ``"512s"`` or ``"8S"`` is 512-byte sectors.
"""
from __future__ import annotations

import re

from .config import MAX_DATA_BLOCK_SIZE, MIN_DATA_BLOCK_SIZE, SECTOR_SIZE

_UNITS = {
    "": 1,
    "b": 1,
    "s": SECTOR_SIZE,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "p": 1 << 50,
    "e": 1 << 60,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([bskmgtpe]?)(?:i?b)?\s*$", re.I)


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Return ``value`` in bytes.

    ``value`` is an int (bytes) or a string with an optional binary unit:
    b, s (sectors), k/KiB/KB, m, g, t, p, e.  Fractions are allowed when the
    result is a whole number of bytes ("1.5TiB").  Raises ``ValueError`` naming
    the text when it does not parse.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: {value} is negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what}: {value!r} is not a size (want bytes or a string like '64KiB')")
    m = _SIZE_RE.match(value)
    if not m:
        raise ValueError(f"{what}: cannot parse {value!r} (want a number with an optional unit: 512, 64k, 64KiB, 10G, 1.5TiB)")
    number, unit = m.group(1), m.group(2).lower()
    mult = _UNITS[unit]
    if "." in number:
        whole, _, frac = number.partition(".")
        num = int(whole or "0") * mult
        if frac:
            scaled = int(frac) * mult
            den = 10 ** len(frac)
            if scaled % den:
                raise ValueError(f"{what}: {value!r} is not a whole number of bytes")
            num += scaled // den
        return num
    return int(number) * mult


def check_block_size(block_size: int | str) -> int:
    """Parse and validate a dm-thin data block size.

    dm-thin accepts 64 KiB to 1 GiB in multiples of 64 KiB (128 sectors).
    """
    size = parse_size(block_size, what="block_size")
    if size < MIN_DATA_BLOCK_SIZE or size > MAX_DATA_BLOCK_SIZE or size % MIN_DATA_BLOCK_SIZE:
        raise ValueError(
            f"block_size {format_size(size)} ({size} bytes) breaks dm-thin's rule: "
            "64 KiB to 1 GiB, a multiple of 64 KiB"
        )
    return size


def format_size(nbytes: int) -> str:
    """Shortest exact binary-unit spelling: 65536 -> '64KiB', 1536 -> '1.5KiB'."""
    for unit, mult in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= mult:
            q = nbytes / mult
            if nbytes % mult == 0:
                return f"{nbytes // mult}{unit}"
            if abs(q * mult - nbytes) < 1e-6 and len(f"{q:g}") <= 8:
                return f"{q:g}{unit}"
    return f"{nbytes}B"


def human_size(nbytes: float) -> str:
    """Rounded binary-unit spelling for people: 66_806_968_320 -> '62.2 GiB'."""
    for unit, mult in (("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(nbytes) >= mult:
            return f"{nbytes / mult:.1f} {unit}"
    return f"{int(nbytes)} B"
