"""Evidence: the decision log, hash chains, sinks, export, report and metrics."""
