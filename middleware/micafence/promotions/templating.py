"""The template hook: let apps leave promotions out at the source.

This is the main control; the HTML rewriter is only the safety net. Plain functions work in any
template system; :func:`install_jinja2` adds them to a Jinja2 environment (Jinja2 itself stays
an optional dependency)::

    from micafence.promotions.templating import install_jinja2
    install_jinja2(templates.env)          # Starlette/FastAPI Jinja2Templates

    {% if promotions_allowed() %}<div class="promo">0% fees</div>{% endif %}
    {% if promotion_allowed("uk") %}<div class="promo">GBP deposits</div>{% endif %}
    {% if promotion_allowed("uk", incentive=True) %}never shown to UK visitors{% endif %}

Both read the decision micafence put in the scope of the template context's ``request``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from micafence.decision import STATE_KEY, Decision
from micafence.policy.model import PromotionStance

if TYPE_CHECKING:
    from jinja2 import Environment
    from jinja2.runtime import Context



def decision_of(request: Any) -> Decision | None:
    """The micafence decision of a Starlette ``Request`` or an ASGI scope, if there is one."""
    scope = getattr(request, "scope", request)
    state = scope.get("state") if isinstance(scope, Mapping) else None
    decision = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    return decision if isinstance(decision, Decision) else None


def promotions_allowed(request: Any) -> bool:
    """May this visitor see promotions at all? True without micafence in front."""
    decision = decision_of(request)
    return decision is None or decision.promotion_stance is PromotionStance.ALLOWED


def promotion_allowed(request: Any, *approved_for: str, incentive: bool = False) -> bool:
    """May this visitor see one promotion, approved for the zones ``approved_for``?

    Visitors whose zones allow promotions see every one. Visitors of an ``approved_only`` zone
    (the UK) see it only when it is approved for every zone they are in and is not an incentive
    (FCA PS23/6 bans incentives to invest). Everyone else sees none.
    """
    decision = decision_of(request)
    if decision is None or decision.promotion_stance is PromotionStance.ALLOWED:
        return True
    if decision.promotion_stance is not PromotionStance.APPROVED_ONLY or incentive:
        return False
    return bool(decision.zones) and set(decision.zones) <= set(approved_for)


def install_jinja2(env: Environment) -> None:
    """Add ``promotions_allowed()`` and ``promotion_allowed(*zones, incentive=False)`` to
    ``env``'s globals. Both read ``request`` from the template context; a context without one
    shows no promotions (fail closed)."""
    from jinja2 import pass_context

    @pass_context
    def _promotions_allowed(context: Context) -> bool:
        request = context.get("request")
        return request is not None and promotions_allowed(request)

    @pass_context
    def _promotion_allowed(context: Context, *approved_for: str, incentive: bool = False) -> bool:
        request = context.get("request")
        return request is not None and promotion_allowed(
            request, *approved_for, incentive=incentive
        )

    env.globals["promotions_allowed"] = _promotions_allowed
    env.globals["promotion_allowed"] = _promotion_allowed
