"""Where a request comes from: client address, country, anonymizer signals."""
