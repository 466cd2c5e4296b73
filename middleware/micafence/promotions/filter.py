"""Remove the promotions a visitor may not see from an HTML page (lexbor, via selectolax).

lexbor builds the same tree a browser builds (the WHATWG parsing algorithm), so the element
removed is the element the browser would have shown, even in malformed HTML where a tokenizer
that only finds tags would cut in the wrong place. ``<template>`` contents, which are outside
the document tree and so outside ``css()``, are cleaned too: a script could clone them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from micafence.promotions.page_codec import Unrewritable

# A whole document rather than a fragment (an htmx partial, say) that must stay a fragment.
_DOCUMENT = re.compile(r"\A\s*(?:<!--.*?-->\s*)*<(?:!doctype|html|head|body)\b", re.I | re.S)


# Pages served again unchanged (a home page every visitor of a zone gets) are rewritten once:
# the result depends only on the filter and the text. At most this many pages of at most this
# many characters are kept, a few MB per worker; a page with per-visitor content simply misses.
_REMEMBERED_PAGES = 64
_REMEMBERED_CHARS = 32_768
_REWRITTEN: dict[tuple[PromotionFilter, str], str | None] = {}


def forget_pages() -> None:
    """Forget the pages rewritten so far (benchmarks time the rewrite itself)."""
    _REWRITTEN.clear()


@dataclass(frozen=True, slots=True)
class PromotionFilter:
    """What to remove for one kind of visitor.

    ``remove`` matches every promotion (including incentives). An element survives only if
    ``approvals`` is not empty, it matches every selector in it (one per ``approved_only`` zone
    the visitor is in) and it matches no ``incentive`` selector.
    """

    remove: str
    approvals: tuple[str, ...] = ()
    incentive: str | None = None
    #: One attribute name per selector that any match must carry (lower case), or empty when
    #: some selector needs none: a page containing none of them holds no promotion.
    markers: tuple[str, ...] = ()
    #: A marker as a whole attribute name: followed by what may end a name in a start tag.
    marker_names: re.Pattern[str] | None = None

    @classmethod
    def build(
        cls, selectors: Sequence[str], incentives: Sequence[str], approvals: Sequence[str]
    ) -> PromotionFilter:
        every = list(dict.fromkeys([*selectors, *incentives]))
        markers = _attribute_markers(every)
        names = re.compile("(?:" + "|".join(map(re.escape, markers)) + r")(?=[\s/>=]|\Z)") \
            if markers else None
        return cls(", ".join(every), tuple(approvals), ", ".join(incentives) or None,
                   markers, names)

    def apply(self, text: str) -> str | None:
        """The page without its promotions, or ``None`` when it holds none (send it as it was)."""
        if self.marker_names is not None:
            lowered = text.lower()
            # No element can match: skip the parse (most pages, usually). The literal test is
            # the fast one; a hit there may still be a longer name (data-promo-slot) or script
            # text (setAttribute("data-promo", …)), which the end-of-name test rules out.
            if not any(marker in lowered for marker in self.markers) \
                    or self.marker_names.search(lowered) is None:
                return None
        if len(text) > _REMEMBERED_CHARS:
            return self._rewrite(text)
        key = (self, text)
        try:
            return _REWRITTEN[key]
        except KeyError:
            pass
        found = self._rewrite(text)
        if len(_REWRITTEN) >= _REMEMBERED_PAGES:
            del _REWRITTEN[next(iter(_REWRITTEN))]  # the oldest
        _REWRITTEN[key] = found
        return found

    def _rewrite(self, text: str) -> str | None:
        try:
            tree = LexborHTMLParser(text)
            root = tree.root
            if root is None or not self._clean(root):
                return None
            if _DOCUMENT.match(text):
                return str(tree.html or "")
            # A fragment comes back as a fragment: lexbor moved any leading <script>, <style>
            # or <meta> into <head>, so the head's content goes first, in document order.
            head = tree.head.inner_html if tree.head is not None else ""
            body = tree.body.inner_html if tree.body is not None else ""
            return f"{head or ''}{body or ''}"
        except (SelectolaxError, RuntimeError, ValueError) as exc:  # lexbor refused the text
            raise Unrewritable(f"HTML parser failed: {exc}") from exc

    def _clean(self, node: LexborNode) -> int:
        removed = 0
        for element in node.css(self.remove):
            if self.approvals and self._approved(element):
                continue
            # remove() unlinks without freeing, so a promotion nested in one removed before
            # is still safe to touch.
            element.remove()
            removed += 1
        for fragment in node.template_fragments():
            removed += self._clean(fragment)
        return removed

    def _approved(self, element: LexborNode) -> bool:
        if self.incentive is not None and element.css_matches(self.incentive):
            return False
        return all(element.css_matches(selector) for selector in self.approvals)


_ATTRIBUTE = re.compile(r"\[\s*([A-Za-z_][-A-Za-z0-9_:.]*)")


def _attribute_markers(selectors: Sequence[str]) -> tuple[str, ...]:
    """For each selector an attribute name a matching element (or its ancestor) must carry.

    Only attribute *names* count: a class or id can be spelled with character references
    (``class="pr&#111;mo"``) and would escape a literal search, a name cannot. A selector with
    a comma, a function (``:not(...)``) or no attribute at all disables the shortcut.
    """
    markers: list[str] = []
    for selector in selectors:
        found = _ATTRIBUTE.search(selector)
        if found is None or "(" in selector or "," in selector:
            return ()
        markers.append(found.group(1).lower())
    return tuple(dict.fromkeys(markers))
