"""The FHIR check of every Bundle we build: R4B's element rules, without building models.

``check_bundle`` walks the JSON a mapper built and checks it against tables derived, once
per type, from the ``fhir.resources`` R4B model classes, so element names, cardinality,
required elements, choice types and each element's primitive type come from the same
source as before (ADR 6). It checks:

- every key is an element of its type (unknown keys, ``_x`` extensions and nulls fail);
- a repeating element is a non-empty list without nulls; a single one is not a list;
- no object, list or string is empty;
- required elements are present and at most one ``x[x]`` choice is set;
- every primitive matches its FHIR R4 type: the spec's regexes for code, id, uri, date,
  dateTime, instant, time and decimal (finite, no exponent beyond 1e±1000), calendar
  dates that exist, integers in range, real booleans, well-formed base64;
- ``Bundle.entry.resource`` by its own ``resourceType``.

Each rule is at least as strict as pydantic applying the R4B model (a differential test
compares the two on generated messages, ``tests/test_fhir_conformance.py``). While it
walks, it turns ``Decimal`` values into JSON numbers in place, so the Bundle it passes
is plain JSON. Failures read like ``Observation.valueQuantity.value (decimal)``: where,
and which rule, never the value.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource

from gateway.normalize._errors import NormalizationError

Checker = Callable[[Any], bool]

# \s as the R4B models' regexes mean it: Unicode White_Space (Python's \s adds \x1c-\x1f).
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_STRING = re.compile(rf"[ \r\n\t]|[^{_WS}]")  # FHIR: [ \r\n\t\S]+, which one such char meets
_CODE = re.compile(rf"[^{_WS}]+([{_WS}][^{_WS}]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI = re.compile(rf"[^{_WS}]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_ZONE = r"(Z|[+\-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"  # no leap second
_DATE = re.compile(rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?")
_DATETIME = re.compile(
    rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{_CLOCK}{_ZONE})?)?)?"
)
_INSTANT = re.compile(rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{_CLOCK}{_ZONE}")
_TIME = re.compile(_CLOCK)
_BASE64 = re.compile(r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_INT32 = (-(2**31), 2**31 - 1)
_MAX_EXPONENT = 1000


def _string(v: Any) -> bool:
    return isinstance(v, str) and _STRING.search(v) is not None


def _pattern(regex: re.Pattern[str]) -> Checker:
    return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None


def _calendar(regex: re.Pattern[str]) -> Checker:
    """A date-bearing type: the regex, and a full date must exist (no 30 February)."""

    def check(v: Any) -> bool:
        if not isinstance(v, str) or regex.fullmatch(v) is None:
            return False
        if len(v) < 10:
            return True
        try:
            date.fromisoformat(v[:10])
        except ValueError:
            return False
        return True

    return check


def _integer(low: int, high: int) -> Checker:
    return lambda v: type(v) is int and low <= v <= high


def _decimal(v: Any) -> bool:
    if type(v) is int:
        return True
    if isinstance(v, float):
        return v == v and abs(v) != float("inf")
    return (
        isinstance(v, Decimal)
        and v.is_finite()
        and abs(v.adjusted()) <= _MAX_EXPONENT
        and _DECIMAL.fullmatch(str(v)) is not None
    )


_PRIMITIVES: dict[str, Checker] = {
    "string": _string,
    "markdown": lambda v: isinstance(v, str) and v != "",  # the models: any string at all
    "xhtml": _string,
    "code": _pattern(_CODE),
    "id": _pattern(_ID),
    "uri": _pattern(_URI),
    "url": _pattern(_URI),
    "canonical": _pattern(_URI),
    "oid": _pattern(re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")),
    "UuidVersion": _pattern(re.compile(r"urn:uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")),
    "EncodedBytes": _pattern(_BASE64),
    "date": _calendar(_DATE),
    "dateTime": _calendar(_DATETIME),
    "instant": _calendar(_INSTANT),
    "time": _pattern(_TIME),
    "decimal": _decimal,
    "integer": _integer(*_INT32),
    "unsignedInt": _integer(0, _INT32[1]),
    "positiveInt": _integer(1, _INT32[1]),
    "integer64": _integer(-(2**63), 2**63 - 1),
    "boolean": lambda v: type(v) is bool,
}


@dataclass(frozen=True, slots=True)
class _Element:
    rule: str  # the primitive's name or the complex type's name: the "(rule)" of an error
    many: bool
    primitive: Checker | None  # None: a complex type, or a resource (``rule == "Resource"``)
    choice: str | None


@dataclass(frozen=True, slots=True)
class _Type:
    elements: dict[str, _Element]
    required: tuple[str, ...]
    choices: tuple[tuple[str, bool], ...]  # (prefix, one of them required)


class _Invalid(Exception):
    """A failure of ``rule`` at ``path``, which grows while unwinding up to the resource."""

    def __init__(self, rule: str, *path: str) -> None:
        super().__init__(rule)
        self.rule = rule
        self.path = list(path)
        self.rooted = False

    def at(self, step: str) -> None:
        if not self.rooted:
            self.path.insert(0, step)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element type behind Optional[...] / List[...], and whether it repeats."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        elif origin is list:
            many, annotation = True, typing.get_args(annotation)[0]
        else:
            return annotation, many


def _element(annotation: Any, choice: str | None) -> _Element:
    inner, many = _unwrap(annotation)
    metadata = getattr(inner, "__metadata__", None)
    if metadata:
        kind = getattr(metadata[0], "__visit_name__", type(metadata[0]).__name__)
        return _Element(kind, many, _PRIMITIVES[kind], choice)
    if inner is bool:
        return _Element("boolean", many, _PRIMITIVES["boolean"], choice)
    name = inner.__name__.removesuffix("Type")
    return _Element(name, many, None, choice)


@functools.cache
def _type(name: str) -> _Type:
    """The element table of an R4B type, derived from its model class once."""
    model = get_fhir_model_class(name)
    elements: dict[str, _Element] = {}
    required: list[str] = []
    choices: dict[str, bool] = {}
    for field_name, field in model.model_fields.items():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        key = field.alias or field_name
        choice = extra.get("one_of_many")
        elements[key] = _element(field.annotation, choice if isinstance(choice, str) else None)
        if extra.get("element_required") or field.is_required():
            required.append(key)
        if isinstance(choice, str):
            needed = extra.get("one_of_many_required") is True
            choices[choice] = choices.get(choice, False) or needed
    return _Type(elements, tuple(required), tuple(choices.items()))


@functools.cache
def _is_resource(name: str) -> bool:
    try:
        model = get_fhir_model_class(name)
    except ValueError:  # not an R4B model at all
        return False
    return issubclass(model, Resource)


def _jsonable(value: Decimal) -> int | float:
    integral = value == value.to_integral_value() and "." not in str(value)
    return int(value) if integral else float(value)


def _object(value: Any, type_name: str) -> None:
    """Check one object of ``type_name``; Decimals inside become JSON numbers in place."""
    if type(value) is not dict or not value:
        raise _Invalid("object")
    spec = _type(type_name)
    elements = spec.elements
    chosen: set[str] | None = None
    for key, item in value.items():
        element = elements.get(key)
        if element is None:
            if key == "resourceType" and type_name == item:
                continue
            raise _Invalid("unknown-element", key)
        if element.choice is not None:
            chosen = chosen if chosen is not None else set()
            if element.choice in chosen:
                raise _Invalid("one-choice", key)
            chosen.add(element.choice)
        if not element.many:
            try:
                converted = _value(item, element)
            except _Invalid as exc:
                exc.at(key)
                raise
            if converted is not None:
                value[key] = converted
            continue
        if type(item) is not list or not item:
            raise _Invalid("list", key)
        i = 0
        try:
            for i, one in enumerate(item):
                converted = _value(one, element)
                if converted is not None:
                    item[i] = converted
        except _Invalid as exc:
            exc.at(str(i))
            exc.at(key)
            raise
    for key in spec.required:
        if key not in value:
            raise _Invalid("required", key)
    for prefix, needed in spec.choices:
        if needed and (chosen is None or prefix not in chosen):
            raise _Invalid("required", f"{prefix}[x]")


def _value(item: Any, element: _Element) -> int | float | None:
    """Check one value; a Decimal's JSON number is returned for the caller to store."""
    check = element.primitive
    if check is None:
        if element.rule == "Resource":
            _resource(item)
        else:
            _object(item, element.rule)
    elif not check(item):
        raise _Invalid(element.rule)
    elif type(item) is Decimal:
        return _jsonable(item)
    return None


def _resource(value: Any) -> None:
    kind = value.get("resourceType") if isinstance(value, dict) else None
    if not isinstance(kind, str) or not kind.isalpha():
        raise _Invalid("resourceType")
    if not _is_resource(kind):
        raise _Invalid("resourceType")
    try:
        _object(value, kind)
    except _Invalid as exc:
        exc.at(kind)
        exc.rooted = True  # name the failing element from its resource, not the Bundle
        raise


def check_bundle(bundle: dict[str, Any]) -> None:
    """Raise :class:`NormalizationError` unless ``bundle`` is a valid R4 Bundle (see above).

    The message names the failing element's path and the rule, never a value.
    """
    try:
        _resource(bundle)
    except _Invalid as exc:
        path = ".".join(exc.path) or "Bundle"
        raise NormalizationError(f"FHIR validation failed: {path} ({exc.rule})") from None
