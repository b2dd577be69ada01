"""Reusable layers (conv blocks, attention, ...)."""
