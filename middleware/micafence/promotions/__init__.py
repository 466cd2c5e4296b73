"""Keeping promotions from restricted visitors: routes, HTML safety net, caches."""
