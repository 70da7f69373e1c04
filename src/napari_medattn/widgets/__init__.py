"""napari widgets of napari-medattn (one file per widget) and the viewer glue they share."""
