"""``micafence demo``: the demo exchange behind the middleware, under uvicorn."""

from __future__ import annotations

import os

import uvicorn

from micafence.grants.signing import GrantKey, key_file_for_demo
from micafence.middleware import MicafenceMiddleware
from micafence_tools.demo.app import build_demo_app
from micafence_tools.demo.grants import seed_on_startup
from micafence_tools.demo.observe import demo_observers

DEMO_GRANT_KEY = "micafence-demo-grants.key"


def build_demo(
    policy: str | os.PathLike[str], geoip_db: str | os.PathLike[str], store: str = "memory://",
    grants: str | os.PathLike[str] | None = None,
    audit_dir: str | os.PathLike[str] | None = None,
    grant_key: GrantKey | None = None,
    anonymizer_db: str | os.PathLike[str] | None = None,
) -> MicafenceMiddleware:
    """The demo exchange wrapped in micafence (``grants``: a seeds file, see demo.grants;
    ``audit_dir``: where the decision log goes, see demo.observe; ``grant_key`` signs the
    store's grant records, default ``$MICAFENCE_GRANT_KEY[_FILE]``; ``anonymizer_db``: an
    Anonymous-IP database, none by default, which the start-up log warns of). micafence answers
    ``/healthz/live``, ``/healthz/ready`` and ``/metrics`` itself; a load error is raised."""
    inner = build_demo_app()
    audit, metrics = demo_observers(audit_dir)
    app = MicafenceMiddleware(inner, policy=policy, geoip_db=geoip_db, store=store,
                              audit=audit, metrics=metrics, grant_key=grant_key,
                              anonymizer_db=anonymizer_db,
                              health_path="/healthz", metrics_path="/metrics")
    if app.startup_error is not None:  # the demo stops here, naming the file
        raise app.startup_error
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
    anonymizer_db: str | os.PathLike[str] | None = None,
) -> None:
    """Serve the demo until interrupted."""
    grant_key = GrantKey.from_env()
    if grant_key is None and not store.lower().startswith("memory:"):
        # Shared stores sign their records; the grant command needs the same key.
        grant_key = key_file_for_demo(DEMO_GRANT_KEY)
        print(f"micafence demo: grant records signed with the key in ./{DEMO_GRANT_KEY} "
              f"(for `micafence grant`: export MICAFENCE_GRANT_KEY_FILE=$PWD/{DEMO_GRANT_KEY})")
    app = build_demo(policy, geoip_db, store, grants, audit_dir, grant_key, anonymizer_db)
    if audit_dir is not None:
        print(f"micafence demo: decision log in {audit_dir} "
              f"(verify: micafence audit verify {audit_dir} --key-file {audit_dir}.key)")
    print(f"micafence demo: http://{host}:{port}/  (policy {app.enforcer.policy.revision}; "
          "try: curl -H 'X-Forwarded-For: 89.160.20.112' -X POST "
          f"http://{host}:{port}/api/accounts)")
    # micafence reads forwarded headers itself, from trusted proxies only: uvicorn must not
    # rewrite the client address first (the CLI equivalent is --no-proxy-headers).
    uvicorn.run(app, host=host, port=port, proxy_headers=False, log_level="info")
