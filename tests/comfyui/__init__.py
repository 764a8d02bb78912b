"""Tests against a real ComfyUI (a package so that its conftest does not shadow tests/conftest.py)."""
