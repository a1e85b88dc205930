"""De-identification profiles: YAML allowlists, validated and compiled once into rules.

A profile names, per resource type, the elements that survive and how (``_rules``):
``string``/``number``/``boolean`` kept if the JSON type fits, a list of allowed codes,
``date`` (shifted or kept, per the profile's ``dates``), ``birthDate`` (also aggregated
over 89, per ``agesOver89``), ``reference`` (rewritten within the Bundle),
``postalCode`` (ZIP3 or ZIP5, per ``postalCode``), ``freetext`` (scrubbed; only under
``freeText``), a type name from ``types``, or a mapping of child elements. Under
``extension``, a mapping from extension URL to the rule for that extension's value.

A profile may ``extends`` a built-in one: it is deep-merged onto it (mappings merge key
by key, anything else replaces, ``null`` removes). The merged profile is validated as a
whole; a ``ProfileError`` names the profile and the bad path, never a data value.
Compiling once per profile keeps YAML out of the per-message path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from security.deid._errors import ProfileError
from security.deid._rules import (
    DIRECT_IDENTIFIERS,
    KNOWN_ELEMENTS,
    KNOWN_RESOURCE_TYPES,
    BirthDate,
    Date,
    Extensions,
    FreeText,
    Obj,
    PostalCode,
    Prim,
    Ref,
    Rule,
)

BUILTIN_PROFILES = ("safe-harbor", "limited-data-set")
DEFAULT_PROFILE = "safe-harbor"
_REQUIRED = ("version", "dates", "agesOver89", "postalCode", "resources")
_SETTINGS = frozenset({*_REQUIRED, "description", "extends", "types", "freeText"})
_ELEMENT = re.compile(r"[a-z][A-Za-z0-9]{0,63}")
_TYPE = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_URL = re.compile(r"(https?|urn):[!-~]{1,250}")
_ZIP3 = re.compile(r"\d{3}")
_PRIMITIVES: Mapping[str, Rule] = {
    "string": Prim(str),
    "number": Prim(float),
    "boolean": Prim(bool),
    "reference": Ref(),
    "freetext": FreeText("plain"),
    "freetext-xhtml": FreeText("xhtml"),
    "freetext-base64": FreeText("base64"),
}


@dataclass(frozen=True)
class Profile:
    """A compiled profile. ``resources`` is used when free text is removed, ``scrubbed``
    (``resources`` plus the ``freeText`` section) when it is tagged or surrogated."""

    name: str
    description: str
    dates: str  # shift | keep
    ages_over_89: str  # aggregate | keep
    zip_digits: int
    resources: Mapping[str, Obj]
    scrubbed: Mapping[str, Obj]
    element_names: frozenset[str]


def load_profile(spec: str | Path) -> Profile:
    """A built-in profile by name, or a YAML file by path; raises ``ProfileError``."""
    text = str(spec)
    if text in BUILTIN_PROFILES:
        return _builtin(text)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        raise ProfileError(
            "unknown profile: the built-in profiles are "
            + ", ".join(BUILTIN_PROFILES)
            + "; a user profile is a path to a YAML file"
        )
    path = Path(text)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ProfileError(f"profile {text}: cannot read it ({exc.strerror})") from None
    return _from_file(text, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _builtin(name: str) -> Profile:
    return _compile(name, _raw_builtin(name, 0))


@functools.lru_cache(maxsize=32)
def _from_file(path: str, mtime_ns: int, size: int) -> Profile:
    """Cached by modification time and size: an edited file is read again."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise ProfileError(f"profile {path}: cannot read it ({reason})") from None
    return _compile(path, _resolve(path, _parse(path, text), 0))


def _raw_builtin(name: str, depth: int) -> dict[str, Any]:
    file = resources.files("security.deid").joinpath("profiles", f"{name}.yaml")
    text = file.read_text(encoding="utf-8")
    return _resolve(name, _parse(name, text), depth)


def _parse(name: str, text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ProfileError(f"profile {name}: not valid YAML{where}") from None
    if not isinstance(doc, dict):
        raise ProfileError(f"profile {name}: the top level must be a mapping of settings")
    return doc


def _resolve(name: str, doc: dict[str, Any], depth: int) -> dict[str, Any]:
    """``doc`` merged onto the profile it ``extends`` (built-in profiles only)."""
    base = doc.get("extends")
    if base is None:
        return doc
    if base not in BUILTIN_PROFILES or depth > 3:
        raise ProfileError(
            f"profile {name}: extends: must name a built-in profile ("
            + ", ".join(BUILTIN_PROFILES)
            + ")"
        )
    merged: dict[str, Any] = _merge(_raw_builtin(base, depth + 1), doc)
    merged.pop("extends", None)
    return merged


def _merge(base: Any, over: Any) -> Any:
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(base.get(key), value)
    return out


def _shown(key: Any) -> str:
    """A key as an error may show it: a plain name, else ``*`` (it could be data)."""
    if isinstance(key, str) and (_ELEMENT.fullmatch(key) or _TYPE.fullmatch(key)):
        return key
    return "*"


def _choice(doc: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = doc[key]
    if value not in allowed:
        raise ProfileError(f"{key}: must be one of {', '.join(allowed)}")
    return str(value)


def _compile(name: str, doc: dict[str, Any]) -> Profile:
    try:
        return _Compiler(name, doc).profile()
    except ProfileError as exc:
        raise ProfileError(f"profile {name}: {exc}") from None


class _Compiler:
    """One profile document -> ``Profile``; types are compiled once and shared."""

    def __init__(self, name: str, doc: dict[str, Any]) -> None:
        self.name = name
        self.doc = doc
        self.types_raw: dict[str, Any] = {}
        self.types: dict[str, Rule] = {}
        self.compiling: set[str] = set()
        self.elements: set[str] = set()
        self.date = Date()
        self.birth = BirthDate()
        self.zip = PostalCode(3)

    def profile(self) -> Profile:
        doc = self.doc
        for key in doc:
            if key not in _SETTINGS:
                raise ProfileError(
                    f"{_shown(key)}: unknown setting; expected " + ", ".join(sorted(_SETTINGS))
                )
        for key in _REQUIRED:
            if key not in doc:
                raise ProfileError(f"{key}: required")
        if doc["version"] != 1:
            raise ProfileError("version: must be 1")
        dates = _choice(doc, "dates", ("shift", "keep"))
        ages = _choice(doc, "agesOver89", ("aggregate", "keep"))
        self.date = Date(shift=dates == "shift")
        self.birth = BirthDate(shift=dates == "shift", aggregate=ages == "aggregate")
        self.zip = self._postal_code(doc["postalCode"])
        types = doc.get("types") or {}
        if not isinstance(types, dict):
            raise ProfileError("types: must be a mapping of type name to rule")
        for type_name in types:
            if not isinstance(type_name, str) or not _TYPE.fullmatch(type_name):
                raise ProfileError(f"types.{_shown(type_name)}: a type name is capitalised")
        self.types_raw = types
        kept = self._section("resources", doc["resources"], free_text=False)
        extra = self._section("freeText", doc.get("freeText") or {}, free_text=True)
        for rtype in extra:
            if rtype not in kept:
                raise ProfileError(f"freeText.{rtype}: the resource type is not in resources")
        scrubbed = {
            rtype: Obj({**obj.children, **extra[rtype].children}) if rtype in extra else obj
            for rtype, obj in kept.items()
        }
        description = doc.get("description", "")
        return Profile(
            name=self.name,
            description=description if isinstance(description, str) else "",
            dates=dates,
            ages_over_89=ages,
            zip_digits=self.zip.digits,
            resources=kept,
            scrubbed=scrubbed,
            element_names=frozenset(self.elements),
        )

    def _postal_code(self, node: Any) -> PostalCode:
        if not isinstance(node, dict) or set(node) - {"digits", "restrictedZip3"}:
            raise ProfileError("postalCode: a mapping with digits (3 or 5) and restrictedZip3")
        digits = node.get("digits")
        if digits not in (3, 5) or isinstance(digits, bool):
            raise ProfileError("postalCode.digits: must be 3 or 5")
        restricted = node.get("restrictedZip3")
        if digits == 3 and not isinstance(restricted, list):
            raise ProfileError("postalCode.restrictedZip3: required with 3 digits (a list)")
        codes = restricted if isinstance(restricted, list) else []
        for i, code in enumerate(codes):
            if not isinstance(code, str) or not _ZIP3.fullmatch(code):
                raise ProfileError(
                    f'postalCode.restrictedZip3[{i}]: a quoted 3-digit string ("036")'
                )
        return PostalCode(int(digits), frozenset(codes))

    def _section(self, section: str, node: Any, free_text: bool) -> dict[str, Obj]:
        if not isinstance(node, dict) or (section == "resources" and not node):
            raise ProfileError(f"{section}: a mapping of resource type to elements")
        out: dict[str, Obj] = {}
        for rtype, body in node.items():
            path = f"{section}.{_shown(rtype)}"
            if rtype not in KNOWN_RESOURCE_TYPES or rtype == "Bundle":
                raise ProfileError(f"{path}: not a FHIR R4 resource type")
            if not isinstance(body, dict):
                raise ProfileError(f"{path}: a mapping of element to rule")
            for reserved in ("id", "resourceType"):
                if reserved in body:
                    raise ProfileError(f"{path}.{reserved}: set by the engine, not allowlisted")
            obj = self._object(body, path, top=True)
            for key, rule in obj.children.items():
                if not free_text and _has_free_text(rule):
                    raise ProfileError(
                        f"{path}.{key}: free text is kept only under freeText (scrubbed first)"
                    )
            out[str(rtype)] = obj
        return out

    def _rule(self, node: Any, path: str, top: bool = False) -> Rule:
        if isinstance(node, dict):
            return self._object(node, path)
        if isinstance(node, list):
            if not node or not all(isinstance(v, str) for v in node):
                raise ProfileError(f"{path}: a list of codes must hold quoted strings")
            return Prim(str, frozenset(node))
        if not isinstance(node, str):
            raise ProfileError(f"{path}: a rule is a name, a list of codes or a mapping")
        if node == "date":
            return self.date
        if node == "birthDate":
            if not top:
                raise ProfileError(f"{path}: birthDate is valid only directly under a resource")
            return self.birth
        if node == "postalCode":
            return self.zip
        if node in _PRIMITIVES:
            return _PRIMITIVES[node]
        if node in self.types_raw:
            return self._type(node)
        raise ProfileError(
            f"{path}: unknown rule; expected string, number, boolean, date, birthDate, "
            "reference, postalCode, freetext[-xhtml|-base64], a type from types, "
            "a list of codes or a mapping"
        )

    def _type(self, name: str) -> Rule:
        if name in self.types:
            return self.types[name]
        if name in self.compiling:
            raise ProfileError(f"types.{name}: refers to itself")
        self.compiling.add(name)
        rule = self._rule(self.types_raw[name], f"types.{name}")
        self.compiling.discard(name)
        self.types[name] = rule
        return rule

    def _object(self, node: dict[Any, Any], path: str, top: bool = False) -> Obj:
        if not node:
            raise ProfileError(f"{path}: allowlist at least one element")
        children: dict[str, Rule] = {}
        for key, sub in node.items():
            here = f"{path}.{_shown(key)}"
            if not isinstance(key, str) or not _ELEMENT.fullmatch(key):
                raise ProfileError(f"{here}: not a FHIR element name")
            if key in DIRECT_IDENTIFIERS:
                raise ProfileError(f"{here}: a direct identifier cannot be allowlisted")
            children[key] = (
                self._extensions(sub, here) if key == "extension" else self._rule(sub, here, top)
            )
            self.elements.add(key)
        text_only = any(isinstance(r, FreeText) and r.form == "base64" for r in children.values())
        return Obj(children, text_only=text_only)

    def _extensions(self, node: Any, path: str) -> Extensions:
        if not isinstance(node, dict) or not node:
            raise ProfileError(f"{path}: a mapping of extension URL to the rule for its value")
        by_url: dict[str, Obj] = {}
        for url, sub in node.items():
            if not isinstance(url, str) or not _URL.fullmatch(url):
                raise ProfileError(f"{path}.*: an extension is named by its absolute URL")
            rule = self._rule(sub, f"{path}[{url}]")
            if not isinstance(rule, Obj):
                raise ProfileError(f"{path}[{url}]: a mapping of value[x] element to rule")
            by_url[url] = rule
        return Extensions(by_url)


def _has_free_text(rule: Rule) -> bool:
    """Whether ``rule`` keeps free text anywhere below it (types cannot be cyclic)."""
    if isinstance(rule, FreeText):
        return True
    if isinstance(rule, Obj):
        return any(_has_free_text(r) for r in rule.children.values())
    if isinstance(rule, Extensions):
        return any(_has_free_text(r) for r in rule.by_url.values())
    return False


def known_elements(profile: Profile) -> frozenset[str]:
    """Element names a report may show: FHIR's own and the profile's (chosen by the
    operator, not by a sender)."""
    return KNOWN_ELEMENTS | profile.element_names
