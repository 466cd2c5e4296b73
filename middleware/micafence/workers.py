"""A gunicorn worker class for apps behind micafence: uvicorn with proxy headers off.

``uvicorn_worker.UvicornWorker`` (the ``uvicorn-worker`` package) runs uvicorn with proxy
headers on, trusting gunicorn's ``--forwarded-allow-ips`` (default ``127.0.0.1,::1``): behind
a local proxy, or with ``'*'``, the client address is replaced from ``X-Forwarded-For`` before
micafence sees the request, and micafence then fails closed and reports not ready
(:mod:`micafence.location.rewrite_alarm`). Run gunicorn with this class instead::

    gunicorn -k micafence.workers.UvicornWorker app:app

micafence reads the forwarded header itself, from ``client_ip.trusted_proxies`` only. Needs
the ``gunicorn`` extra (``pip install 'micafence[gunicorn]'``: gunicorn and uvicorn-worker, which
brings uvicorn); nothing else in micafence imports this module or uvicorn.
"""

from __future__ import annotations

from typing import Any, ClassVar

from micafence.live.server_workers import declare_workers

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker
except ModuleNotFoundError as exc:  # gunicorn shows this when loading the worker class
    raise ModuleNotFoundError(
        f"micafence.workers.UvicornWorker needs {exc.name}: pip install 'micafence[gunicorn]'",
        name=exc.name,
    ) from exc


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]  # uvicorn-worker has no type hints
    """``uvicorn_worker.UvicornWorker`` with ``proxy_headers=False`` (whatever
    ``--forwarded-allow-ips`` says): the client address reaches micafence as connected."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS, "proxy_headers": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Before the app loads: the middleware warns when its memory store (each worker's
        # own) serves under several workers (micafence.live.server_workers).
        declare_workers(int(self.cfg.workers), "gunicorn's workers setting")
