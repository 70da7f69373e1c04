"""Attention blocks, one mechanism per module, 2D and 3D from the same code."""
