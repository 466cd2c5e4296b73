"""Optional dependencies: imported only where used, with an error naming the extra to install.

The core needs none of them; ``redis://`` stores and audit streams need the ``redis`` extra
(``pip install 'micafence[redis]'``). :func:`require` is called where such a feature is opened,
so a missing package fails there, once, with the command that fixes it.
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str, feature: str, error: type[Exception]) -> None:
    """Import ``module`` or raise ``error`` saying which ``extra`` brings it for ``feature``."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise error(f"{feature} needs the {module.partition('.')[0]} package, which is not "
                    f"installed: pip install 'micafence[{extra}]'") from exc
