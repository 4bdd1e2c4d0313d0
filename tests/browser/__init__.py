"""Helpers for tests that drive a real headless browser (Debian's chromium)."""
