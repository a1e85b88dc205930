"""The delimiters a message declares in MSH-1 and MSH-2, and how they are checked."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.normalize._errors import Hl7ParseError


@dataclass(frozen=True, slots=True)
class EncodingChars:
    """The delimiters a message declares in MSH-1 and MSH-2 ("" when not declared)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def msh2(self) -> str:
        """MSH-2 as it should be written (4 characters, 5 with a truncation character)."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_ENCODING = EncodingChars()


def encoding_from_header(field_sep: str, msh2: str) -> EncodingChars:
    """Build the delimiters from MSH-1 and the raw MSH-2 text.

    Tolerates one sender bug seen in the wild (and in the LFH corpus): the escape
    character written twice (``^~\\\\&``), read as ``^~\\&``. Fewer than four characters
    leave the missing delimiters undeclared; anything ambiguous raises.
    """
    if len(field_sep) != 1 or field_sep.isalnum() or field_sep.isspace():
        raise Hl7ParseError("MSH-1 invalid: field separator must be one non-alphanumeric character")
    chars = msh2
    if len(chars) == 5 and chars[2] == chars[3]:
        chars = chars[:3] + chars[4]
    if not 1 <= len(chars) <= 5:
        raise Hl7ParseError("MSH-2 invalid: encoding characters must be 1 to 5 characters")
    if len(set(chars + field_sep)) != len(chars) + 1:
        raise Hl7ParseError("MSH-2 invalid: encoding characters must be distinct")
    if any(c.isalnum() or c.isspace() for c in chars):
        raise Hl7ParseError("MSH-2 invalid: encoding characters must not be alphanumeric")
    padded = chars.ljust(5, "\0")
    c, r, e, s, t = (x if x != "\0" else "" for x in padded)
    return EncodingChars(field_sep, c, r, e, s, t)
