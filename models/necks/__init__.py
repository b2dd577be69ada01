"""Necks: fuse the two dates' feature pyramids."""
