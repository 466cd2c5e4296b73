"""Client-initiated scopes: catalogues, grants, enforcement, onboarding, grant CLI."""
