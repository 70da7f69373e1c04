"""Display conventions without napari: window/level, radiological orientation, layer data."""
