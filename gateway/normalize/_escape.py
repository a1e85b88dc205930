"""HL7 v2 escape sequences: reading them (unescape) and writing them (escape).

Kept apart from the reader because writers (ACKs, the demo feed, outbound ORU) need
:func:`escape` without the parser, and because the round trip is property-tested.
"""

from __future__ import annotations

from gateway.normalize._delimiters import DEFAULT_ENCODING, EncodingChars


def _decode_hex(hexdigits: str) -> str | None:
    if not hexdigits or len(hexdigits) % 2:
        return None
    try:
        raw = bytes.fromhex(hexdigits)
    except ValueError:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _decode_sequence(seq: str, enc: EncodingChars) -> str | None:
    """One escape sequence's text, or None to keep it verbatim (unknown/local ``\\Z..\\``)."""
    match seq:
        case "F":
            return enc.field
        case "S":
            return enc.component
        case "T":
            return enc.subcomponent
        case "R":
            return enc.repetition
        case "E":
            return enc.escape
        case "P":
            return enc.truncation or None
        case "H" | "N":
            return ""  # highlighting on/off: no meaning in FHIR strings
        case ".br" | ".sp":
            return "\n"
    if seq.startswith("X"):
        return _decode_hex(seq[1:])
    if seq.startswith(("C", "M")) and len(seq) > 1:
        return ""  # character-set switches: the text is already decoded
    if seq.startswith("."):
        return ""  # other formatted-text commands (.in, .ti, .sk, .ce, .fi, .nf)
    return None


def unescape(value: str, enc: EncodingChars = DEFAULT_ENCODING) -> str:
    """Resolve HL7 escape sequences (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\P\\ \\Xhh..\\``, ...)."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        j = value.find(esc, i)
        if j < 0:
            break
        k = value.find(esc, j + 1)
        if k < 0:
            break
        out.append(value[i:j])
        decoded = _decode_sequence(value[j + 1 : k], enc)
        if decoded is None:
            out.append(value[j : k + 1])
        else:
            out.append(decoded)
        i = k + 1
    out.append(value[i:])
    return "".join(out)


def escape(value: str, enc: EncodingChars = DEFAULT_ENCODING) -> str:
    """The inverse of :func:`unescape`; CR and LF become ``\\X0D\\`` / ``\\X0A\\``."""
    e = enc.escape
    if not e:
        return value
    out = value.replace(e, f"{e}E{e}")
    for char, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.subcomponent, "T"),
        (enc.repetition, "R"),
        (enc.truncation, "P"),
        ("\r", "X0D"),
        ("\n", "X0A"),
    ):
        if char and char in out:
            out = out.replace(char, f"{e}{code}{e}")
    return out
