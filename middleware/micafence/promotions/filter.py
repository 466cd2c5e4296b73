"""What the safety net removes for one kind of visitor (the guard builds one per kind and keeps it).

The selectors come from the policy (:mod:`micafence.policy.selectors`, compound selectors only);
:meth:`PromotionFilter.rewriter` gives the streaming engine for one response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from micafence.policy.selectors import SelectorList, parse_selectors
from micafence.promotions.engine import PageRewriter
from micafence.promotions.xml_rewriter import XmlRewriter

#: One response's streaming rewriter: ``write``, ``end``, ``close``, ``removed``.
Rewriter = PageRewriter | XmlRewriter


@dataclass(frozen=True, slots=True)
class PromotionFilter:
    """What to remove for one kind of visitor.

    ``remove`` matches every promotion (incentives included). A matching element survives only
    if ``approvals`` is not empty, it matches every selector in it (one per ``approved_only``
    zone the visitor is in) and it matches no ``incentive`` selector (UK: approved promotions
    stay, incentives never do).
    """

    remove: SelectorList
    approvals: tuple[SelectorList, ...] = ()
    incentive: SelectorList | None = None
    #: What the engine runs, as two lol-html selector lists: ``(exact, checked)``. ``exact``
    #: matches only elements that go, so lol-html removes them without asking Python (most
    #: promotions: ``[data-promo]``, when no approval can keep one); ``checked`` finds the
    #: other candidates, each decided by :meth:`removes`.
    engine_plan: tuple[str | None, str | None] = field(init=False, compare=False)

    @classmethod
    def build(
        cls, selectors: Sequence[str], incentives: Sequence[str], approvals: Sequence[str]
    ) -> PromotionFilter:
        every = list(dict.fromkeys([*selectors, *incentives]))
        parsed = [parse_selectors(text) for text in every]
        remove = SelectorList(", ".join(every),
                              tuple(c for selector in parsed for c in selector.compounds))
        incentive = None
        if incentives:
            found = [parse_selectors(text) for text in incentives]
            incentive = SelectorList(", ".join(incentives),
                                     tuple(c for selector in found for c in selector.compounds))
        return cls(remove, tuple(parse_selectors(a) for a in approvals), incentive)

    @property
    def engine_selectors(self) -> list[str]:
        """The selectors lol-html runs: a superset of what :meth:`removes` may say yes to."""
        return self.remove.engine_selectors()

    def __post_init__(self) -> None:
        exact = [] if self.approvals else [c for c in self.remove.compounds if c.exact]
        checked = [s for c in self.remove.compounds if c not in exact
                   for s in c.engine_selectors()]
        object.__setattr__(self, "engine_plan", (
            ", ".join(dict.fromkeys(c.css() for c in exact)) or None,
            ", ".join(dict.fromkeys(checked)) or None))

    def removes(self, tag: str, attributes: Mapping[str, str], html: bool = True) -> bool:
        """Does the element go (``attributes``: lower-case names, decoded values; ``html``: an
        HTML element, not an SVG or MathML one)?"""
        if not self.remove.matches(tag, attributes, html):
            return False
        if not self.approvals:
            return True
        if self.incentive is not None and self.incentive.matches(tag, attributes, html):
            return True
        return not all(approval.matches(tag, attributes, html) for approval in self.approvals)

    def rewriter(self, *, utf8: bool = True, xml: bool = False,
                 meta_charset: bool = False) -> Rewriter:
        """A fresh streaming rewriter for one response (``utf8``: the page is in UTF-8;
        ``xml``: the browser parses it as XML, so expat reads it, not lol-html;
        ``meta_charset``: its encoding was not fixed by a BOM or the ``Content-Type``, so a late
        ``<meta>`` may still change it)."""
        if xml:
            return XmlRewriter(self, utf8=utf8)
        return PageRewriter(self, utf8=utf8, meta_charset=meta_charset)
