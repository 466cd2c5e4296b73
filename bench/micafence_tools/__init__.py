"""micafence-tools: the demo exchange (``micafence demo``) and the benchmark (``micafence bench``).

A distribution of its own, beside the core ``micafence`` package: the middleware needs neither
Starlette nor uvicorn, these do. Both commands reach the ``micafence`` command through the
``micafence.subcommands`` entry-point group (see :mod:`micafence.cli`).
"""
