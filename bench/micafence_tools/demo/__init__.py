"""Demo exchange app that ``micafence demo`` wraps with the middleware."""
