"""Golden test vectors."""
