"""Conformance runner, clause catalog and recorded traffic."""
