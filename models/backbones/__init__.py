"""Backbones: feature extractors that say which channels and strides they emit."""
