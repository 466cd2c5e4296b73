"""micafence test suite."""
