"""DICOMweb client side (on dicomweb-client): connect, search, retrieve into a cache, store.

:class:`Connection` holds a server URL and its credentials (basic or bearer; never shown
in text, logs, errors or provenance); :func:`search_studies` and :func:`search_series`
query by patient, date and modality (QIDO-RS); :func:`retrieve_series` brings a series
into the user's cache folder with resume and makes it visible only when complete
(WADO-RS); :func:`store` sends SEG/SR files back (STOW-RS); :func:`clear_cache` empties the
cache. Server faults (down, timeout, 401, 403) raise
:class:`~napari_medattn.errors.PacsError` with one sentence.
"""

from napari_medattn.pacs.cache import cache_root, clear_cache, retrieve_series
from napari_medattn.pacs.client import Connection, store
from napari_medattn.pacs.query import search_series, search_studies

__all__ = [
    "Connection",
    "cache_root",
    "clear_cache",
    "retrieve_series",
    "search_series",
    "search_studies",
    "store",
]
