"""``micafence demo``: the demo exchange behind the middleware, under uvicorn."""

from __future__ import annotations

import os

import uvicorn

from ..middleware import MicafenceMiddleware
from .app import build_demo_app


def build_demo(
    policy: str | os.PathLike[str], geoip_db: str | os.PathLike[str], store: str = "memory://"
) -> MicafenceMiddleware:
    """The demo exchange wrapped in micafence."""
    return MicafenceMiddleware(build_demo_app(), policy=policy, geoip_db=geoip_db, store=store)


def run_demo(
    *,
    host: str,
    port: int,
    policy: str | os.PathLike[str],
    geoip_db: str | os.PathLike[str],
    store: str = "memory://",
) -> None:
    """Serve the demo until interrupted."""
    app = build_demo(policy, geoip_db, store)
    print(f"micafence demo: http://{host}:{port}/  (policy {app.enforcer.policy.revision}; "
          "try: curl -H 'X-Forwarded-For: 89.160.20.112' -X POST "
          f"http://{host}:{port}/api/accounts)")
    # micafence reads forwarded headers itself, from trusted proxies only: uvicorn must not
    # rewrite the client address first (the CLI equivalent is --no-proxy-headers).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_level="info")
