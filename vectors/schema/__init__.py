"""JSON Schemas of the vector files (a package only so the wheel ships them)."""
