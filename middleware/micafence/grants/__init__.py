"""Client-initiated grants: the grant book, its cache, signatures, the gate that enforces a grant's
scope on a request, onboarding tokens, and the `micafence grant` command."""
