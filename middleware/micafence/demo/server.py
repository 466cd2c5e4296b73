"""``micafence demo``: the demo exchange behind the middleware, under uvicorn."""

from __future__ import annotations

import os

import uvicorn

from ..middleware import MicafenceMiddleware
from .app import build_demo_app
from .grants import seed_on_startup
from .observe import demo_observers


def build_demo(
    policy: str | os.PathLike[str], geoip_db: str | os.PathLike[str], store: str = "memory://",
    grants: str | os.PathLike[str] | None = None,
    audit_dir: str | os.PathLike[str] | None = None,
) -> MicafenceMiddleware:
    """The demo exchange wrapped in micafence (``grants``: a seeds file, see demo.grants;
    ``audit_dir``: where the decision log goes, see demo.observe)."""
    inner = build_demo_app()
    audit, metrics = demo_observers(inner, audit_dir)
    app = MicafenceMiddleware(inner, policy=policy, geoip_db=geoip_db, store=store,
                              audit=audit, metrics=metrics)
    if grants is not None:
        seed_on_startup(app, grants)
    return app


def run_demo(
    *,
    host: str,
    port: int,
    policy: str | os.PathLike[str],
    geoip_db: str | os.PathLike[str],
    store: str = "memory://",
    grants: str | os.PathLike[str] | None = None,
    audit_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Serve the demo until interrupted."""
    app = build_demo(policy, geoip_db, store, grants, audit_dir)
    if audit_dir is not None:
        print(f"micafence demo: decision log in {audit_dir} "
              f"(verify: micafence audit verify {audit_dir} --key-file {audit_dir}.key)")
    print(f"micafence demo: http://{host}:{port}/  (policy {app.enforcer.policy.revision}; "
          "try: curl -H 'X-Forwarded-For: 89.160.20.112' -X POST "
          f"http://{host}:{port}/api/accounts)")
    # micafence reads forwarded headers itself, from trusted proxies only: uvicorn must not
    # rewrite the client address first (the CLI equivalent is --no-proxy-headers).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_level="info")
