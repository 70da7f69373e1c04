"""Reading and writing volumes with exact patient geometry (see ``volume`` for conventions)."""

from napari_medattn.io.volume import Volume

__all__ = ["Volume"]
