"""Thin click commands that call the stages of pvhvm; no logic of their own."""
