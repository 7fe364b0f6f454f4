"""The ``vbproto`` command groups, one module each; cli.py registers them on the root group."""
