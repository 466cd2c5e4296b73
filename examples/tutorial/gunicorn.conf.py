"""gunicorn settings for the tutorial exchange (docs/tutorial.md): gunicorn -c gunicorn.conf.py"""

from micafence.logs import logging_config

wsgi_app = "app:app"

# Only the reverse proxy on this host reaches gunicorn; it appends the client's address to
# X-Forwarded-For, and policy.yaml trusts that header from 127.0.0.1 and ::1 only.
bind = "127.0.0.1:8000"
workers = 2

# uvicorn's worker with uvicorn's proxy headers off: micafence reads X-Forwarded-For itself,
# from the policy's client_ip.trusted_proxies, so gunicorn's forwarded_allow_ips is not used
# and the trusted proxies are listed in one place, which `micafence check` validates.
worker_class = "micafence.workers.UvicornWorker"

# After SIGTERM: time to finish the requests in flight and micafence's lifespan shutdown.
graceful_timeout = 30

# One JSON object a line on stderr, for gunicorn's, uvicorn's and micafence's records alike.
logconfig_dict = logging_config()
