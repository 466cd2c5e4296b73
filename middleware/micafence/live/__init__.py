"""Live operations: hot reload, policy archive, break-glass, health endpoint."""
