"""Test doubles for tools that cannot run on a test host (makechrootpkg, sudo), and small helpers."""
