"""Built-in and user models, loaded without executing code from any file.

Formats
-------
* **This package's format**: a folder holding ``weights.safetensors`` and ``card.json``
  (:class:`~napari_medattn.models.card.ModelCard`). Built-in models are such folders in
  the package's ``weights/``; user models live in :func:`user_model_dir` and in the
  folders of the ``MEDATTN_MODEL_PATH`` environment variable (``os.pathsep``-separated).
* **A plain state dict** (``.pt``/``.pth``), read with ``torch.load(weights_only=True)``
  into a chosen architecture and config (a ``<stem>.json`` card beside it is used if
  present).
* **A MONAI bundle** folder or zip (needs MONAI): the network is built from the bundle's
  ``network_def`` (a class of ``monai.networks.nets`` and literal arguments only), its
  ``channel_def`` labels and preprocessing (spacing, orientation, intensity) become a card
  (see :mod:`napari_medattn.models.monai_bundle`).

Safety: safetensors holds tensors only; ``torch.load(weights_only=True)`` refuses any
pickle that would import or call code, and the refusal is reported as a
:class:`~napari_medattn.errors.ModelError`; a bundle's network definition may not contain
Python expressions; TorchScript files are refused.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.io.atomic import atomic_files
from napari_medattn.io.provenance import file_sha256
from napari_medattn.models import monai_bundle
from napari_medattn.models.card import ModelCard, default_classes
from napari_medattn.models.monai_bundle import MONAI_PREFIX

CARD_FILE = "card.json"
WEIGHTS_FILE = "weights.safetensors"
ENV_MODEL_PATH = "MEDATTN_MODEL_PATH"
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "weights"

Architecture = str | Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A model found on disk: its card, its folder, and where it was found."""

    card: ModelCard
    path: Path
    source: str  # "builtin" or "user"

    @property
    def name(self) -> str:
        return self.card.name


# ------------------------------------------------------------------------------ search


def user_model_dir() -> Path:
    """The per-user model folder (e.g. ``~/.local/share/napari-medattn/models`` on Linux)."""
    from platformdirs import user_data_dir  # a dependency of napari

    return Path(user_data_dir("napari-medattn", appauthor=False)) / "models"


def _scan(folder: Path, source: str, problems: list[str] | None = None) -> list[ModelEntry]:
    """Model folders directly under ``folder`` (a folder holding a card and weights).

    A folder whose card is invalid raises, or is skipped with a sentence appended to
    ``problems`` when a list is given.
    """
    if not folder.is_dir():
        return []
    entries = []
    for child in sorted(folder.iterdir()):
        if (child / CARD_FILE).is_file() and (child / WEIGHTS_FILE).is_file():
            try:
                entries.append(ModelEntry(ModelCard.read(child / CARD_FILE), child, source))
            except ModelError as error:
                if problems is None:
                    raise
                problems.append(f"Skipped the model in {child}: {error}")
    return entries


def builtin_models(folder: str | Path | None = None) -> list[ModelEntry]:
    """The models shipped in the package (or in ``folder``), sorted by folder name.

    An empty or missing folder gives an empty list.
    """
    return _scan(Path(folder) if folder is not None else BUILTIN_DIR, "builtin")


def user_model_folders() -> list[Path]:
    """Folders searched for user models: ``MEDATTN_MODEL_PATH`` entries, then the user dir."""
    folders = [Path(p) for p in os.environ.get(ENV_MODEL_PATH, "").split(os.pathsep) if p]
    return folders + [user_model_dir()]


def list_models(problems: list[str] | None = None) -> list[ModelEntry]:
    """Built-in models, then user models (names must be unique; the first one wins).

    Parameters
    ----------
    problems : list of str, optional
        When given, user models that cannot be listed (invalid card, a name already
        taken) are skipped and a sentence for each is appended here, so one broken
        folder does not hide the others; otherwise an invalid card raises ModelError.
    """
    entries = builtin_models()
    seen = {e.name: e.path for e in entries}
    for folder in user_model_folders():
        for entry in _scan(folder, "user", problems):
            if entry.name not in seen:
                entries.append(entry)
                seen[entry.name] = entry.path
            elif problems is not None:
                problems.append(f"Skipped the model in {entry.path}: the name {entry.name!r} "
                                f"is taken by {seen[entry.name]}.")
    return entries


def find_model(name: str) -> ModelEntry:
    """The model called ``name`` among :func:`list_models`."""
    entries = list_models(problems=[])
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries) or "none installed"
    raise ModelError(f"There is no model called {name!r} (available: {known}).")


# ------------------------------------------------------------------------------ hashing


#: The built-in model run when the user names none (CLI, Segment widget, ``make run``).
#: The gated attention U-Net: the shipped DSSA-UNet is undertrained (docs/models.md). A
#: constant rather than a flag in the cards, so two cards can never both claim it.
DEFAULT_MODEL = "attention-unet-brain-tissue"


def default_model() -> ModelEntry:
    """The :class:`ModelEntry` to run when the user names no model.

    Raises
    ------
    ModelError
        The default built-in model is not installed (one sentence naming what is).
    """
    for entry in builtin_models():
        if entry.name == DEFAULT_MODEL:
            return entry
    installed = ", ".join(e.name for e in list_models(problems=[])) or "none"
    raise ModelError(f"The default model {DEFAULT_MODEL!r} is not installed; name a model "
                     f"with --model NAME or PATH (installed: {installed}).")


def weights_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a weights file, for cards and provenance records."""
    return file_sha256(path)


# ------------------------------------------------------------------------------ loading


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a ``.pt``/``.pth`` state dict, code-free.

    A ``.pt`` may hold the state dict itself or under ``"state_dict"`` / ``"model"``.

    Raises
    ------
    ModelError
        If the file is unreadable, holds pickled code, or holds no tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ModelError(f"Cannot read the weights {path.name}: {error}.") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelError(
            f"{path.name} contains pickled Python objects beyond tensors; napari-medattn "
            f"refuses to unpickle code. Save a plain state dict (model.state_dict()) or "
            f"safetensors instead. ({str(error).splitlines()[0]})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise ModelError(f"Cannot read the weights {path.name}: {error}.") from None
    if isinstance(data, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelError(f"{path.name} is not a state dict (a mapping of names to tensors).")
    return dict(data)


def _create(architecture: Architecture, config: Mapping[str, Any]) -> nn.Module:
    if callable(architecture):
        try:
            return architecture(**config)
        except TypeError as error:
            raise ModelError(f"The architecture does not accept this config: {error}.") from None
    if architecture.startswith(MONAI_PREFIX):
        return monai_bundle.create_monai(architecture[len(MONAI_PREFIX):], config)
    from napari_medattn import models

    try:
        return models.create(architecture, **config)
    except TypeError as error:
        raise ModelError(f"Architecture {architecture!r} does not accept this config: "
                         f"{error}.") from None


def _load_into(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).split("\n\t")[1:3]
        raise ModelError(f"The weights {what} do not fit the architecture: "
                         f"{'; '.join(first) or error}.") from None


def load_model(
    name_or_path: str | Path,
    *,
    architecture: Architecture | None = None,
    config: Mapping[str, Any] | None = None,
    card: ModelCard | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, ModelCard]:
    """Load a model and its card, executing no code from any file.

    Parameters
    ----------
    name_or_path : str or Path
        A model name from :func:`list_models`; a model folder (``card.json`` +
        ``weights.safetensors``); a ``.safetensors``/``.pt``/``.pth`` weights file; or a
        MONAI bundle folder or ``.zip``.
    architecture : str or callable, optional
        For a bare weights file: a name for :func:`napari_medattn.models.create`,
        ``"monai:<Net>"`` for a MONAI network, or a callable returning the module.
    config : mapping, optional
        Keyword arguments of ``architecture``.
    card : ModelCard, optional
        Card for a bare weights file (or to replace a bundle's derived card).
    device : str or torch.device
        Where the module is placed.

    Returns
    -------
    module : nn.Module
        In eval mode, on ``device``.
    card : ModelCard
        With ``weights_sha256`` set to the hash of the weights file read, for provenance.

    Raises
    ------
    ModelError
        Unknown name, unreadable or unsafe file, weights that do not fit.
    """
    path = Path(name_or_path)
    if not path.exists():
        if isinstance(name_or_path, str) and os.sep not in name_or_path and "/" not in name_or_path:
            path = find_model(name_or_path).path
        else:
            raise ModelError(f"The model {name_or_path} does not exist.")
    if path.is_dir() and (path / CARD_FILE).is_file():
        module, card = _load_package_format(path)
    elif monai_bundle.is_bundle(path):
        module, card = _load_bundle(path, card)
    elif path.is_file() and path.suffix in (".safetensors", ".pt", ".pth"):
        module, card = _load_weights_file(path, architecture, config, card)
    elif path.suffix in (".ts", ".jit") or path.name.endswith(".torchscript"):
        raise ModelError(f"{path.name} is a TorchScript program, which is code; load a "
                         f"state dict or safetensors instead.")
    else:
        raise ModelError(f"{path} is not a model folder, a weights file (.safetensors, .pt) "
                         f"or a MONAI bundle.")
    return module.to(device).eval(), card


def _with_hash(card: ModelCard, weights: Path) -> ModelCard:
    """The card with the SHA-256 of ``weights`` (for provenance), checked if it had one."""
    digest = weights_sha256(weights)
    if card.weights_sha256 and digest != card.weights_sha256:
        raise ModelError(f"The weights of {card.name!r} do not match the hash in its card "
                         f"(the file is damaged or was replaced).")
    return dataclasses.replace(card, weights_sha256=digest)


def _load_package_format(folder: Path) -> tuple[nn.Module, ModelCard]:
    card = ModelCard.read(folder / CARD_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"The model folder {folder.name} has a card but no {WEIGHTS_FILE}.")
    card = _with_hash(card, weights)
    module = _create(card.architecture, card.config)
    _load_into(module, read_state_dict(weights), f"of {card.name!r}")
    return module, card


def _load_weights_file(path: Path, architecture: Architecture | None,
                       config: Mapping[str, Any] | None,
                       card: ModelCard | None) -> tuple[nn.Module, ModelCard]:
    beside = path.with_suffix(".json")
    if card is None and beside.is_file():
        card = ModelCard.read(beside)
    if architecture is None:
        if card is None:
            raise ModelError(f"{path.name} holds weights only; say which architecture (and "
                             f"config) they belong to, or put a card beside them.")
        architecture, config = card.architecture, card.config
    config = dict(config or {})
    state = read_state_dict(path)  # before building: an unsafe file stops here
    module = _create(architecture, config)
    _load_into(module, state, path.name)
    if card is None:
        card = _card_for_bare_weights(path, architecture, config, module)
    return module, _with_hash(card, path)


def _card_for_bare_weights(path: Path, architecture: Architecture, config: dict,
                           module: nn.Module) -> ModelCard:
    classes = config.get("out_channels", config.get("num_classes"))
    patch = config.get("patch_size", config.get("img_size"))
    if not isinstance(classes, int) or patch is None:
        raise ModelError(f"{path.name} comes without a card and its config does not say the "
                         f"number of classes (out_channels) and window size (patch_size); "
                         f"pass a card.")
    name = architecture if isinstance(architecture, str) else getattr(
        architecture, "__name__", type(module).__name__)
    return ModelCard(
        name=path.stem, architecture=name, config=config,
        classes=default_classes(["background"] + [f"class {i}" for i in range(1, classes)]),
        patch_size=tuple(int(p) for p in (patch if not isinstance(patch, int) else [patch] * 3)),
        in_channels=int(config.get("in_channels", 1)),
        training_procedure=f"Unknown: a bare state dict loaded from {path.name}.",
    )


def _load_bundle(path: Path, card: ModelCard | None) -> tuple[nn.Module, ModelCard]:
    """A MONAI bundle's network with its weights; its card is derived unless ``card`` is given."""
    with monai_bundle.open_bundle(path) as bundle:
        module = bundle.network()
        weights = bundle.weights()
        _load_into(module, read_state_dict(weights), f"of bundle {bundle.folder.name}")
        return module, _with_hash(card if card is not None else bundle.card(), weights)


# ------------------------------------------------------------------------------ saving


def save_model(module: nn.Module, card: ModelCard, folder: str | Path) -> Path:
    """Write ``weights.safetensors`` and ``card.json`` into ``folder``, atomically.

    Each file is written under a temporary name in ``folder`` and renamed into place
    (:func:`~napari_medattn.io.atomic.atomic_files`), so a crash never leaves a
    half-written model, and only those temporaries are removed: other files in the folder
    are left alone. The card records the weights' SHA-256.

    Returns
    -------
    Path
        ``folder``.
    """
    from safetensors.torch import save_file

    # Shared or non-contiguous tensors cannot be stored as is: store detached copies.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    # The card goes last: a folder whose card is in place has its matching weights.
    with atomic_files(folder, [WEIGHTS_FILE, CARD_FILE]) as temporary:
        save_file(state, str(temporary[WEIGHTS_FILE]),
                  metadata={"format": "pt", "name": card.name})
        card = dataclasses.replace(card,
                                   weights_sha256=weights_sha256(temporary[WEIGHTS_FILE]))
        temporary[CARD_FILE].write_text(card.to_json(), encoding="utf-8")
    return folder
