"""napari-medattn: attention-based medical image analysis in napari."""

__version__ = "0.1.0"
