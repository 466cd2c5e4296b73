"""Who the client is beyond the request's network: the client registry (where each client is
established, :mod:`micafence.clients.registry`), the residence a sign-up declares
(:mod:`micafence.clients.declarations`) and the ``micafence client`` commands."""
