"""Fusion: overlays brought into a base scan's patient space, and their composition
(windows, colour tables, blend, checkerboard, difference, MIP). No napari here."""
