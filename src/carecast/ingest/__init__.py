"""Outside formats -> domain records. Validates, never writes (see README.md)."""
