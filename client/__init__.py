"""uds client library (filled in by the phase-1 work)."""
