"""Virtqueues: split and packed rings over guest memory (PROTOCOL.md section 5)."""
