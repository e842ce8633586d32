"""Shared helpers for tests that run real apbd processes."""
