"""Test helpers (imported by the tests as ``helpers.*``; conftest.py only sets the environment)."""
