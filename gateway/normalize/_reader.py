"""A small, fast HL7 v2 (ER7) reader.

Why not hl7apy for the hot path: it builds a typed tree per message and checks every
element against the version's structure tables, which is slow and rejects real-world
quirks (segments from later versions, a doubled escape character in MSH-2). Mapping only
needs positional access, so a message here is a list of segments, each a list of raw
field strings split once on the field separator. Repetitions, components and
subcomponents are split on access, and values are unescaped only when asked for.

Positions follow the standard: fields and components are 1-based, repetitions 0-based,
and MSH-1 is the field separator itself (so MSH-2 is the encoding characters and MSH-9
the message type). Absent values read as ``""``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.normalize._charset import decode_payload
from gateway.normalize._delimiters import EncodingChars, encoding_from_header
from gateway.normalize._errors import Hl7ParseError
from gateway.normalize._escape import unescape

_BOM = "\ufeff"
_SEGMENT_START = re.compile(r"^[A-Z][A-Z0-9]{2}")


class Segment:
    """One segment: ``fields[i]`` is the raw text of field *i* (``fields[0]`` the name)."""

    __slots__ = ("_enc", "fields", "name")

    def __init__(self, name: str, fields: list[str], enc: EncodingChars) -> None:
        self.name = name
        self.fields = fields
        self._enc = enc

    def __len__(self) -> int:
        return len(self.fields)

    def __repr__(self) -> str:  # no values: they may be PHI
        return f"<Segment {self.name} fields={len(self.fields) - 1}>"

    def rep_count(self, idx: int) -> int:
        """How many repetitions field *idx* has (0 when empty or absent)."""
        if idx >= len(self.fields) or idx < 1 or not self.fields[idx]:
            return 0
        if self.name == "MSH" and idx <= 2:
            return 1
        rep = self._enc.repetition
        return self.fields[idx].count(rep) + 1 if rep else 1

    def field(
        self, idx: int, rep: int = 0, comp: int = 1, sub: int = 1, *, raw: bool = False
    ) -> str:
        """Field *idx*, repetition *rep*, component *comp*, subcomponent *sub*.

        ``comp=0`` returns the whole repetition and ``sub=0`` the whole component
        (delimiters kept; with ``raw=False`` only escapes are resolved). ``raw=True``
        returns the text as sent, without unescaping.
        """
        fields = self.fields
        if idx < 0 or idx >= len(fields):
            return ""
        value = fields[idx]
        if not value:
            return ""
        if idx <= 2 and self.name == "MSH":
            return value if rep == 0 and comp <= 1 and sub <= 1 else ""
        enc = self._enc
        if enc.repetition and enc.repetition in value:
            parts = value.split(enc.repetition)
            if rep >= len(parts):
                return ""
            value = parts[rep]
        elif rep:
            return ""
        if comp:
            if enc.component and enc.component in value:
                parts = value.split(enc.component)
                if comp > len(parts):
                    return ""
                value = parts[comp - 1]
            elif comp > 1:
                return ""
            if sub:
                if enc.subcomponent and enc.subcomponent in value:
                    parts = value.split(enc.subcomponent)
                    if sub > len(parts):
                        return ""
                    value = parts[sub - 1]
                elif sub > 1:
                    return ""
        return value if raw else unescape(value, enc)


class Hl7Message:
    """A parsed message: its delimiters and its segments in order."""

    __slots__ = ("_segments", "encoding")

    def __init__(self, segments: list[Segment], encoding: EncodingChars) -> None:
        self._segments = segments
        self.encoding = encoding

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def __repr__(self) -> str:  # no values: they may be PHI
        return f"<Hl7Message {self.message_type} segments={len(self._segments)}>"

    def segments(self, name: str | None = None) -> list[Segment]:
        """All segments, or those named *name*, in message order."""
        if name is None:
            return list(self._segments)
        return [s for s in self._segments if s.name == name]

    def segment(self, name: str) -> Segment | None:
        """The first segment named *name*, if any."""
        for s in self._segments:
            if s.name == name:
                return s
        return None

    def field(self, seg: str, idx: int, rep: int = 0, comp: int = 1, sub: int = 1) -> str:
        """:meth:`Segment.field` on the first segment named *seg* ("" if there is none)."""
        found = self.segment(seg)
        return found.field(idx, rep, comp, sub) if found is not None else ""

    @property
    def _msh(self) -> Segment:
        return self._segments[0]

    @property
    def message_code(self) -> str:
        """MSH-9.1, e.g. ``ORU``."""
        return self._msh.field(9, 0, 1).strip()

    @property
    def trigger(self) -> str:
        """MSH-9.2, e.g. ``R01`` (EVN-1 is not trusted: senders leave it stale)."""
        return self._msh.field(9, 0, 2).strip()

    @property
    def structure(self) -> str:
        """MSH-9.3, e.g. ``ORU_R01`` ("" when not sent)."""
        return self._msh.field(9, 0, 3).strip()

    @property
    def message_type(self) -> str:
        """``code^trigger`` from MSH-9, e.g. ``ORU^R01`` (no message structure)."""
        code, trigger = self.message_code, self.trigger
        return f"{code}^{trigger}" if trigger else code

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self._msh.field(10)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``2.5.1``."""
        return self._msh.field(12).strip()

    @property
    def processing_id(self) -> str:
        """MSH-11.1 (P production, T training, D debugging)."""
        return self._msh.field(11).strip()

    @property
    def timestamp(self) -> str:
        """MSH-7 as sent (an HL7 DTM)."""
        return self._msh.field(7)

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return self._msh.field(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1."""
        return self._msh.field(4)

    @property
    def receiving_application(self) -> str:
        """MSH-5.1."""
        return self._msh.field(5)

    @property
    def receiving_facility(self) -> str:
        """MSH-6.1."""
        return self._msh.field(6)


def split_segments(text: str) -> list[str]:
    """Segment lines: CR, LF or CRLF terminated; MLLP framing, BOM and blank lines dropped."""
    text = text.lstrip(_BOM + "\x0b \t\r\n")
    if text.endswith(("\x1c", "\x1c\r")):
        text = text[: text.rindex("\x1c")]
    text = text.rstrip("\r\n")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [line for line in text.split("\r") if line and not line.isspace()]


def _rejoin_broken_lines(lines: list[str], fs: str) -> list[str]:
    """A line that does not start with a segment name continues the previous segment.

    Free text (NTE-3, OBX-5 TX) sometimes carries a raw line break instead of
    ``\\.br\\``; splitting there would drop the rest of the text into a bogus segment.
    """
    out: list[str] = []
    for line in lines:
        if out and not (_SEGMENT_START.match(line) and line[3:4] in (fs, "")):
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def parse_message(data: bytes | str) -> Hl7Message:
    """Parse one HL7 v2 message; raises :class:`Hl7ParseError` if there is no usable MSH."""
    text = decode_payload(data) if isinstance(data, bytes | bytearray) else data
    lines = split_segments(text)
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        raise Hl7ParseError("MSH missing: a message must start with an MSH segment")
    header = lines[0]
    fs = header[3]
    msh_parts = header.split(fs)
    enc = encoding_from_header(fs, msh_parts[1] if len(msh_parts) > 1 else "")
    msh_fields = ["MSH", fs, *msh_parts[1:]]
    if len(msh_parts) > 1 and msh_parts[1] != enc.msh2:
        msh_fields[2] = enc.msh2  # the doubled-escape tolerance: record what we used
    segments = [Segment("MSH", msh_fields, enc)]
    for line in _rejoin_broken_lines(lines, fs)[1:]:
        parts = line.split(fs)
        name = parts[0]
        if name == "MSH":
            parts = [name, fs, *parts[1:]]
        segments.append(Segment(name, parts, enc))
    return Hl7Message(segments, enc)
