"""Decode heads: fused features -> class logits."""
