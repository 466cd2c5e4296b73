"""Policy selectors: the CSS subset the promotion safety net can evaluate on one start tag.

The safety net streams (lol-html): when it meets a start tag it must decide there and then
whether the element goes, so a selector may only look at the tag itself: its name, ``#id``,
``.class`` and attribute selectors (``[a]``, ``[a=v]``, ``[a~=v]``, ``[a^=v]``, ``[a$=v]``,
``[a*=v]``, ``[a|=v]``, each with an optional ``i`` flag), in comma-separated lists of such
compound selectors. Combinators (``div p``, ``a > b``) and pseudo-classes (``:not()``,
``:first-child``) need the element's ancestors or siblings and are refused when the policy
loads, with the reason.

Matching is ours, not the engine's: lol-html compares *raw* attribute values, so
``class="b&#97;nner"`` is not ``.banner`` to it, while the browser decodes the reference and
shows the banner. :meth:`SelectorList.engine_selectors` therefore gives lol-html a superset
(every element that could match once decoded), and :meth:`SelectorList.matches` decides on the
decoded values, as the browser's DOM holds them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from html.entities import html5 as _NAMED_REFERENCES

__all__ = ["Compound", "Condition", "SelectorError", "SelectorList", "decode_attribute",
           "parse_selectors"]


class SelectorError(ValueError):
    """A selector the safety net cannot evaluate (the message says why)."""


# ASCII identifiers only: a value the page spells in its own (maybe legacy) charset is matched
# on what the engine reads as UTF-8, which is the same text only for ASCII.
_IDENT = re.compile(r"-?[A-Za-z_][-A-Za-z0-9_]*|--[-A-Za-z0-9_]*")
_ATTRIBUTE_NAME = _IDENT
_OPERATORS = ("~=", "^=", "$=", "*=", "|=", "=")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_WHITESPACE = " \t\n\r\f"
#: What ``~=`` (and ``.class``) split a value on: HTML's ASCII whitespace, as browsers do (not
#: ``str.split()``'s wider set: a no-break space would make an approval match that does not).
_WORD_SEPARATORS = re.compile(r"[ \t\n\r\f]+")
# Attributes whose values a browser's selectors compare ASCII case-insensitively on an HTML
# element (the HTML standard's list, "case-sensitivity of selectors"; on an SVG or MathML
# element they are case-sensitive, as Chromium's querySelectorAll shows); lol-html does too.
_CASE_INSENSITIVE_VALUES = frozenset({
    "accept", "accept-charset", "align", "alink", "axis", "bgcolor", "charset", "checked",
    "clear", "codetype", "color", "compact", "declare", "defer", "dir", "direction", "disabled",
    "enctype", "face", "frame", "hreflang", "http-equiv", "lang", "language", "link", "media",
    "method", "multiple", "nohref", "noresize", "noshade", "nowrap", "readonly", "rel", "rev",
    "rules", "scope", "scrolling", "selected", "shape", "target", "text", "type", "valign",
    "valuetype", "vlink",
})


@dataclass(frozen=True, slots=True)
class Condition:
    """One attribute test: ``name`` present, and (with ``operator``) its value as CSS says."""

    name: str  # lower case
    operator: str | None = None
    value: str = ""
    ignore_case: bool = False

    def holds(self, attributes: Mapping[str, str], html: bool = True) -> bool:
        """Does the test hold (``html``: on an HTML element, whose listed attributes compare
        their values ignoring ASCII case)?"""
        found = attributes.get(self.name)
        if found is None:
            return False
        if self.operator is None:
            return True
        value, wanted = found, self.value
        if self.ignore_case or (html and self.name in _CASE_INSENSITIVE_VALUES):
            value, wanted = _ascii_lower(value), _ascii_lower(wanted)
        if self.operator == "=":
            return value == wanted
        if self.operator == "|=":
            return value == wanted or value.startswith(wanted + "-")
        if not wanted:  # CSS: ~=, ^=, $=, *= with an empty value match nothing
            return False
        if self.operator == "~=":
            return wanted in _WORD_SEPARATORS.split(value)
        if self.operator == "^=":
            return value.startswith(wanted)
        if self.operator == "$=":
            return value.endswith(wanted)
        return wanted in value  # "*="

    def css(self) -> str:
        if self.operator is None:
            return f"[{self.name}]"
        return f"[{self.name}{self.operator}{_quote(self.value)}{' i' if self.ignore_case else ''}]"


@dataclass(frozen=True, slots=True)
class Compound:
    """A compound selector: an optional tag name and attribute conditions, all on one tag."""

    tag: str | None  # lower case; None: any
    conditions: tuple[Condition, ...]

    def matches(self, tag: str, attributes: Mapping[str, str], html: bool = True) -> bool:
        if self.tag is not None and _ascii_lower(tag) != self.tag:
            return False
        return all(condition.holds(attributes, html) for condition in self.conditions)

    @property
    def exact(self) -> bool:
        """Does lol-html's own match of :meth:`css` equal :meth:`matches`? True when every
        condition is an attribute's presence: names are ASCII case-insensitive for both, and
        no value (so no character reference) is read."""
        return all(condition.operator is None for condition in self.conditions)

    def css(self) -> str:
        """The compound as a CSS selector."""
        return (self.tag or "") + "".join(c.css() for c in self.conditions) or "*"

    def engine_selectors(self) -> list[str]:
        """Selectors lol-html runs on raw values that together catch every element this one
        matches once the values are decoded.

        A decoded value that contains ``v`` was spelled with ``v`` in it, or with a character
        reference (an ``&``) somewhere in it: one selector for the first case (each value
        test widened to ``*=v i``), one per tested attribute for the second. A test on a
        ``data-*`` attribute is widened to the attribute's presence instead, which covers both
        cases in one selector (lol-html's time grows with every selector it runs): such an
        attribute marks what the page's authors want found, so few elements carry it, whereas
        ``class`` or ``href`` are on most elements.
        """
        tag = self.tag or ""
        widened = [f"[{c.name}]" if c.operator is None or not c.value or _marker(c.name)
                   else f"[{c.name}*={_quote(c.value)} i]" for c in self.conditions]
        found = [tag + "".join(widened) or "*"]
        present = "".join(dict.fromkeys(f"[{c.name}]" for c in self.conditions))
        for name in dict.fromkeys(c.name for c in self.conditions
                                  if c.operator is not None and c.value and not _marker(c.name)):
            found.append(f"{tag}{present}[{name}*=\"&\"]")
        return found


@dataclass(frozen=True, slots=True)
class SelectorList:
    """A comma-separated list of compound selectors, as written in the policy."""

    text: str
    compounds: tuple[Compound, ...]

    def matches(self, tag: str, attributes: Mapping[str, str], html: bool = True) -> bool:
        """Does the element (``attributes``: lower-case names, decoded values; ``html``: an
        HTML element, not an SVG or MathML one) match?"""
        return any(compound.matches(tag, attributes, html) for compound in self.compounds)

    def engine_selectors(self) -> list[str]:
        """The lol-html selectors finding every candidate (:meth:`Compound.engine_selectors`)."""
        found: list[str] = []
        for compound in self.compounds:
            found.extend(compound.engine_selectors())
        return list(dict.fromkeys(found))

    @property
    def attribute_names(self) -> frozenset[str]:
        """Attribute names some compound tests (``class`` and ``id`` included)."""
        return frozenset(c.name for compound in self.compounds for c in compound.conditions)


def parse_selectors(text: str) -> SelectorList:
    """Parse a policy selector (a comma-separated list), or raise :class:`SelectorError`."""
    if not _PRINTABLE.fullmatch(text.replace("\t", " ").replace("\n", " ")):
        raise SelectorError("only printable ASCII is supported (a page's own charset may spell "
                            "other characters differently from how the rewriter reads them)")
    parser = _Parser(text)
    compounds = [parser.compound()]
    while parser.skip_space() and parser.take(","):
        compounds.append(parser.compound())
    if not parser.at_end():
        parser.refuse_here()
    return SelectorList(text, tuple(compounds))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def at_end(self) -> bool:
        return self.at >= len(self.text)

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def take(self, literal: str) -> bool:
        if self.text.startswith(literal, self.at):
            self.at += len(literal)
            return True
        return False

    def skip_space(self) -> bool:
        while self.peek() and self.peek() in _WHITESPACE:
            self.at += 1
        return True

    def fail(self, problem: str) -> SelectorError:
        return SelectorError(f"{problem} (at character {self.at + 1})")

    def refuse_here(self) -> None:
        char = self.peek()
        if not char:
            raise self.fail("a selector is missing" if self.text.strip() else "empty selector")
        if char == ":":
            raise self.fail("pseudo-classes (':…') need more than the element's own start tag; "
                            "only tag, #id, .class and [attribute] selectors are supported")
        if char in ">+~" or char in _WHITESPACE:
            raise self.fail("combinators (descendant ' ', '>', '+', '~') need the element's "
                            "ancestors or siblings; use one compound selector per list entry")
        raise self.fail(f"unexpected {char!r}" if char else "unexpected end")

    def ident(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.at)
        if found is None:
            if self.peek() == "\\":
                raise self.fail("CSS escapes are not supported")
            raise self.fail(f"expected {what}")
        self.at = found.end()
        return found.group(0)

    def compound(self) -> Compound:
        self.skip_space()
        tag: str | None = None
        star = self.take("*")
        if not star and _IDENT.match(self.text, self.at):
            tag = self.ident(_IDENT, "a tag name").lower()
        if self.peek() == "|":
            raise self.fail("namespaced selectors are not supported")
        conditions: list[Condition] = []
        while True:
            if self.take("#"):
                conditions.append(Condition("id", "=", self.ident(_IDENT, "an id")))
            elif self.take("."):
                conditions.append(Condition("class", "~=", self.ident(_IDENT, "a class name")))
            elif self.take("["):
                conditions.append(self.attribute())
            else:
                break
        if tag is None and not conditions:
            if star:
                raise self.fail("'*' alone would remove every element")
            self.refuse_here()
        save = self.at
        self.skip_space()
        if self.peek() not in ("", ","):
            self.at = save
            self.refuse_here()
        self.at = save
        return Compound(tag, tuple(conditions))

    def attribute(self) -> Condition:
        self.skip_space()
        if self.peek() in ("|", "*"):
            raise self.fail("namespaced attribute selectors are not supported")
        name = self.ident(_ATTRIBUTE_NAME, "an attribute name").lower()
        if self.peek() == "|" and self.text[self.at + 1:self.at + 2] != "=":
            raise self.fail("namespaced attribute selectors are not supported")
        self.skip_space()
        if self.take("]"):
            return Condition(name)
        for operator in _OPERATORS:
            if self.take(operator):
                break
        else:
            raise self.fail("expected ']' or one of = ~= ^= $= *= |=")
        self.skip_space()
        value = self.string() if self.peek() in ("\"", "'") else self.ident(_IDENT, "a value")
        self.skip_space()
        ignore_case = False
        if self.peek() in ("i", "I", "s", "S"):
            ignore_case = self.peek() in ("i", "I")
            self.at += 1
            self.skip_space()
        if not self.take("]"):
            raise self.fail("expected ']'")
        return Condition(name, operator, value, ignore_case)

    def string(self) -> str:
        quote = self.peek()
        self.at += 1
        out: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise self.fail("unterminated string")
            self.at += 1
            if char == quote:
                return "".join(out)
            if char == "\\":
                escaped = self.peek()
                if escaped not in ("\\", '"', "'"):
                    raise self.fail("only \\\\, \\\" and \\' escapes are supported in a string")
                out.append(escaped)
                self.at += 1
            else:
                out.append(char)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _marker(name: str) -> bool:
    """A ``data-*`` attribute: a page's own marker (see :meth:`Compound.engine_selectors`)."""
    return name.startswith("data-")


def _ascii_lower(text: str) -> str:
    return text.lower() if text.isascii() else "".join(
        c.lower() if c.isascii() else c for c in text)


# -- attribute values as the DOM holds them -------------------------------------------------------

_REFERENCE = re.compile(r"&(#[xX][0-9a-fA-F]+;?|#[0-9]+;?|[A-Za-z][A-Za-z0-9]*;?)")
_LONGEST_NAME = max(len(name) for name in _NAMED_REFERENCES)
# WHATWG: numeric references to these code points give the windows-1252 character instead.
# (Five of them, undefined there, stay as they are.)
_C1 = {code: bytes([code]).decode("cp1252") for code in range(0x80, 0xA0)
       if code not in (0x81, 0x8D, 0x8F, 0x90, 0x9D)}


def decode_attribute(raw: str) -> str:
    """An attribute value as written in a start tag → the value the DOM holds.

    Input-stream preprocessing (CR LF and CR become LF, NUL becomes U+FFFD) and character
    references as the tokenizer reads them *in an attribute value*: a named reference without
    its ``;`` followed by ``=`` or an alphanumeric stays literal (``?a=1&copy=2``).
    """
    if "\r" in raw or "\0" in raw:
        raw = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    if "&" not in raw:
        return raw
    return _REFERENCE.sub(lambda found: _reference(found, raw), raw)


def _reference(found: re.Match[str], raw: str) -> str:
    body = found.group(1)
    if body.startswith("#"):
        digits = body[1:].rstrip(";")
        code = int(digits[1:], 16) if digits[:1] in ("x", "X") else int(digits)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return "\ufffd"
        return _C1.get(code, chr(code))
    # Named: the longest known name that is a prefix (with or without ';').
    for length in range(min(len(body), _LONGEST_NAME), 0, -1):
        name = body[:length]
        replacement = _NAMED_REFERENCES.get(name)
        if replacement is None:
            continue
        if not name.endswith(";"):
            following = body[length:length + 1] or raw[found.end():found.end() + 1]
            if following == "=" or following.isalnum():
                return found.group(0)  # attribute rule: left as written
        return replacement + body[length:]
    return found.group(0)
