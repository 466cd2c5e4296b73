"""The JSON Schema of policy files, shipped beside the default policy (``data/policy.schema.json``).

Editors that speak JSON Schema (the YAML language server, JetBrains IDEs) use it to complete
keys and flag mistakes while a policy is typed. It states the shape of a policy: keys, types,
enumerations, required keys and the rules that hold within one entry. The loader
(:mod:`micafence.policy.loader`) remains the authority and checks more, chiefly what one part
of the file says about another (a rule naming a zone that does not exist); docs/policy.md
lists those checks, and tests/test_policy_schema.py holds the two to each other.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def schema_path() -> Path:
    """Where the installed package keeps the schema."""
    return Path(str(resources.files("micafence") / "data" / "policy.schema.json"))


def schema_text() -> str:
    """The schema, as the JSON text shipped."""
    return schema_path().read_text(encoding="utf-8")
