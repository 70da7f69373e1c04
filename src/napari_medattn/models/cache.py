"""The one process-wide model cache: a network with given weights is held once.

Widgets (Segment, Attention inspector, and every job widget after them) and scripts ask
:data:`model_cache` for a model instead of calling
:func:`~napari_medattn.models.registry.load_model` themselves, so two of them on the same
model share one ``nn.Module``::

    from napari_medattn.models.cache import model_cache

    held = model_cache.load("attention-unet-brain-tissue")   # name, folder or ModelEntry
    with held.lease(cancel):                  # while computing with the shared network
        result = segment(volume, held.module, held.card, cancel=cancel)

Key. A network is identified by the SHA-256 of its weights file (``card.weights_sha256``)
with the architecture and config that build it (the same tensors in another network are
another model). A listed model whose card records its hash is found in the cache without
reading the weights again; any other source (a folder or file the user opened) is loaded,
and if a network with the same key is already held, that one is returned and the new copy
dropped. The card is returned per request: two folders holding the same weights share the
network but each keeps its own card.

Eviction. The :attr:`~ModelCache.capacity` most recently requested models (4 by default)
are held by the cache itself; older ones are released by it but remain shared for as long
as anyone (a widget, a running job) still holds them, and asking for such a model again
returns that same object. A model nobody holds is freed by Python once it has left the
most-recent set.

Threads. Loads happen in worker threads: the cache's bookkeeping is under a lock, and two
threads asking for the same model at once load it once (the second waits for the first).
The shared network is not safe to use from two threads at once (a run moves it to its
device and attention capture hooks into it), so work that computes with it holds its
:meth:`CachedModel.lease`; a second job on the same model waits (cancellably) for the first.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from napari_medattn.errors import Cancelled
from napari_medattn.models import registry
from napari_medattn.models.card import ModelCard
from napari_medattn.models.registry import ModelEntry

#: Models held by the cache itself (the most recently requested ones).
DEFAULT_CAPACITY = 4
#: Seconds between two looks at the cancel flag while a lease waits for another job.
LEASE_POLL_S = 0.1

Key = tuple[str, str, str]  # (weights SHA-256, architecture, config as sorted JSON)
Source = ModelEntry | str | Path


class _Network:
    """One network in memory and the lock of whoever computes with it (weak-referenceable:
    the cache's second tier refers to it weakly)."""

    def __init__(self, module: nn.Module, key: Key) -> None:
        self.module = module
        self.key = key
        self.lock = threading.RLock()


@dataclasses.dataclass(frozen=True, eq=False)
class CachedModel:
    """A shared network and the card it was asked for under.

    Holding this object keeps the network alive (and shared) after the cache's most-recent
    set has moved on.

    Attributes
    ----------
    card : ModelCard
        With ``weights_sha256`` set.
    """

    card: ModelCard
    _network: _Network

    @property
    def module(self) -> nn.Module:
        """The network, in eval mode; shared with every other holder of the same key."""
        return self._network.module

    @property
    def key(self) -> Key:
        """(weights SHA-256, architecture, config JSON): what makes two models the same."""
        return self._network.key

    @contextmanager
    def lease(self, cancel: Callable[[], bool] | None = None,
              blocking: bool = True) -> Iterator[bool]:
        """Hold the network for a computation (re-entrant within one thread).

        Parameters
        ----------
        cancel : callable, optional
            Polled every :data:`LEASE_POLL_S` seconds while another job holds the network;
            when it returns True the wait ends with :class:`~napari_medattn.errors.Cancelled`.
        blocking : bool
            False: do not wait; the context yields False when another job holds it (the
            caller then leaves the network alone), True when it got the lease.
        """
        lock = self._network.lock
        if not blocking:
            got = lock.acquire(blocking=False)
        else:
            while not (got := lock.acquire(timeout=LEASE_POLL_S)):
                if cancel is not None and cancel():
                    raise Cancelled("Cancelled while waiting for another job on the same "
                                    "model.")
        try:
            yield got
        finally:
            if got:
                lock.release()


def model_key(card: ModelCard) -> Key | None:
    """The cache key of a model described by ``card``; None when the card does not record
    the weights' hash (the model must be loaded to know it)."""
    if not card.weights_sha256:
        return None
    architecture = card.architecture if isinstance(card.architecture, str) else repr(
        card.architecture)
    return (card.weights_sha256, architecture,
            json.dumps(card.config, sort_keys=True, default=str))


class ModelCache:
    """Networks by the hash of their weights, shared by everyone in the process.

    Parameters
    ----------
    capacity : int
        How many of the most recently requested models the cache holds itself (see the
        module's notes on eviction); at least 1.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = max(1, int(capacity))
        self._lock = threading.Lock()
        self._recent: OrderedDict[Key, _Network] = OrderedDict()
        self._alive: weakref.WeakValueDictionary[Key, _Network] = weakref.WeakValueDictionary()
        self._loading: dict[Key, threading.Lock] = {}

    def __len__(self) -> int:
        """Models alive in the cache's reach (held by it or by someone else)."""
        with self._lock:
            return len(self._alive)

    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._alive

    def clear(self) -> None:
        """Release every model the cache holds (holders keep theirs; they stop being
        shared with later requests)."""
        with self._lock:
            self._recent.clear()
            self._alive.clear()

    def peek(self, source: Source) -> CachedModel | None:
        """The model for ``source`` if it is in memory and its key is known without
        loading (a listed model whose card records its hash); None otherwise. Never
        reads weights, so it may be called on the GUI thread."""
        entry = self._entry(source)
        key = model_key(entry.card) if entry is not None else None
        if key is None:
            return None
        with self._lock:
            network = self._touch(key)
        return CachedModel(entry.card, network) if network is not None else None

    def load(self, source: Source) -> CachedModel:
        """The model for ``source``: from memory when held, else loaded (on this thread).

        Parameters
        ----------
        source : ModelEntry, str or Path
            A listed model (:class:`~napari_medattn.models.registry.ModelEntry` or its
            name), or a model folder, weights file or MONAI bundle
            (see :func:`~napari_medattn.models.registry.load_model`).

        Raises
        ------
        ModelError
            As :func:`~napari_medattn.models.registry.load_model`.
        """
        entry = self._entry(source)
        key = model_key(entry.card) if entry is not None else None
        if key is None:  # the key is known only once the weights are read
            module, card = registry.load_model(source.path if isinstance(source, ModelEntry)
                                               else source)
            return CachedModel(card, self._insert(model_key(card), module))
        with self._lock:
            network = self._touch(key)
            if network is not None:
                return CachedModel(entry.card, network)
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # a second thread asking for this model waits for the first load
            try:
                with self._lock:
                    network = self._touch(key)
                if network is None:
                    module, card = registry.load_model(entry.path)
                    network = self._insert(model_key(card), module)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return CachedModel(entry.card, network)

    # -- bookkeeping (callers hold self._lock where noted) ------------------------------
    @staticmethod
    def _entry(source: Source) -> ModelEntry | None:
        """The listed model a source names, if it is one (a name or a ModelEntry)."""
        if isinstance(source, ModelEntry):
            return source
        if isinstance(source, str) and not Path(source).exists() and "/" not in source:
            return registry.find_model(source)
        return None

    def _touch(self, key: Key) -> _Network | None:
        """(Under the lock.) The network for ``key`` if alive, made most recent."""
        network = self._alive.get(key)
        if network is not None:
            self._remember(key, network)
        return network

    def _remember(self, key: Key, network: _Network) -> None:
        """(Under the lock.) Put ``network`` first in the most-recent set, evicting the
        oldest beyond capacity."""
        self._recent[key] = network
        self._recent.move_to_end(key)
        while len(self._recent) > self.capacity:
            self._recent.popitem(last=False)

    def _insert(self, key: Key, module: nn.Module) -> _Network:
        """Hold a freshly loaded ``module``, unless another of the same key is alive:
        then that one is returned and the fresh copy dropped."""
        with self._lock:
            network = self._alive.get(key)
            if network is None:
                network = _Network(module, key)
                self._alive[key] = network
            self._remember(key, network)
            return network


#: The process-wide cache.
model_cache = ModelCache()
