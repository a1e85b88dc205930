"""Bytes to text for HL7 v2: honour MSH-18 when it names a charset, else UTF-8, else Latin-1.

MSH-18 is read from the raw bytes of the first line before decoding (MSH itself is
ASCII in every charset HL7 allows over MLLP). Latin-1 is the last resort because it
never fails: a mis-declared message still parses, and its text is at worst mojibake.
"""

from __future__ import annotations

_BOM_CHARS = "\ufeff\x0b\x1c\xef\xbb\xbf"

# Charset names of HL7 table 0211 (MSH-18) -> Python codecs.
_CHARSETS = {
    "ASCII": "utf-8",
    "ISO IR6": "utf-8",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc_kr",
}


def declared_charset(data: bytes) -> str | None:
    """The Python codec named by MSH-18 (first repetition), or None if absent/unknown."""
    end = len(data)
    for sep in (b"\r", b"\n"):
        i = data.find(sep)
        if 0 <= i < end:
            end = i
    line = data[:end].decode("latin-1").lstrip(_BOM_CHARS)
    if not line.startswith("MSH") or len(line) < 4:
        return None
    parts = line.split(line[3])
    if len(parts) <= 17:
        return None
    rep_sep = parts[1][1:2] if len(parts[1]) > 1 else "~"
    name = parts[17].split(rep_sep)[0].strip().upper() if rep_sep else parts[17].strip().upper()
    return _CHARSETS.get(name)


def decode_payload(data: bytes) -> str:
    """Bytes -> text: the MSH-18 charset if declared, else UTF-8, falling back to Latin-1."""
    codecs = [c for c in (declared_charset(data), "utf-8") if c]
    for codec in codecs:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("latin-1")
