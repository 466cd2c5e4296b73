"""The promotion filter's shortcut: pages that cannot hold a promotion skip the parse, and
nothing that can hold one ever does."""

from __future__ import annotations

import pytest

from micafence.promotions.filter import PromotionFilter

DEFAULT = PromotionFilter.build(["[data-promo]"], ["[data-promo-kind~=incentive]"], [])


def test_page_without_any_marker_is_sent_as_it_was() -> None:
    assert DEFAULT.apply("<p>prices only</p>") is None


@pytest.mark.parametrize("page", [
    '<div id="slot" data-promo-slot></div><p>prices</p>',  # a longer name is another attribute
    '<script>el.setAttribute("data-promo", "")</script><p>prices</p>',  # script text
    "<p>Our data-promo-free pages</p>",
])
def test_a_marker_that_is_not_a_whole_attribute_name_is_no_reason_to_parse(page: str) -> None:
    assert DEFAULT.apply(page) is None


@pytest.mark.parametrize("page", [
    '<div DATA-PROMO id="x">0% fees</div>',  # attribute names are case-insensitive
    '<div data-promo-slot data-promo>0% fees</div>',  # both: the second is a match
    "<div\tdata-promo\n>0% fees</div>",
    "<div data-promo/>0% fees</div>",
    '<div id="a"data-promo=1>0% fees</div>',  # no space after a quoted value still counts
    "<div data-promo>0% fees</div>",
    "<template><div data-promo>0% fees</div></template>",
    '<svg><g data-promo="1"><text>0% fees</text></g></svg>',
])
def test_marked_promotions_are_still_removed(page: str) -> None:
    cleaned = DEFAULT.apply(page)
    assert cleaned is not None and "0% fees" not in cleaned


def test_class_selectors_take_no_shortcut_since_character_references_hide_them() -> None:
    by_class = PromotionFilter.build([".banner"], [], [])
    assert by_class.markers == ()
    cleaned = by_class.apply('<div class="b&#97;nner">0% fees</div><p>prices</p>')
    assert cleaned is not None and "0% fees" not in cleaned and "prices" in cleaned


@pytest.mark.parametrize("selectors", [["div:not([x])"], ["[data-a], .b"], ["aside"]])
def test_selectors_without_a_sure_attribute_disable_the_shortcut(selectors: list[str]) -> None:
    assert PromotionFilter.build(selectors, [], []).markers == ()


def test_a_page_served_again_gets_the_same_cleaning_for_each_kind_of_visitor() -> None:
    """Rewrites are remembered per page and per filter: a page cleaned for one zone is never
    handed to a visitor of another."""
    page = ('<!doctype html><body><div data-promo data-promo-approved="uk">UK-approved</div>'
            "<div data-promo>0% fees</div><p>prices</p></body>")
    uk = PromotionFilter.build(["[data-promo]"], [], ['[data-promo-approved~="uk"]'])
    for _ in range(3):
        for_eu, for_uk = DEFAULT.apply(page), uk.apply(page)
        assert for_eu is not None and for_uk is not None
        assert "UK-approved" not in for_eu and "0% fees" not in for_eu
        assert "UK-approved" in for_uk and "0% fees" not in for_uk
