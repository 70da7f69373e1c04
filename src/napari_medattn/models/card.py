"""The model card: what a set of weights is, what it expects, and how it was made.

A card is stored as ``card.json`` beside ``weights.safetensors``. Loading validates every
field and refuses unknown ones (a typo must not silently drop, say, the spacing), each
problem reported as one :class:`~napari_medattn.errors.ModelError` sentence.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from napari_medattn.errors import ModelError

CARD_VERSION = 1
TASKS = ("segmentation", "detection", "classification", "registration",
         "multimodal-segmentation")
MODALITIES = ("CT", "MR", "PT", "OT")
_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
_ORIENTATION = re.compile(r"^[LR][PA][SI]$|^[LR][SI][PA]$|^[PA][LR][SI]$|^[PA][SI][LR]$|"
                          r"^[SI][LR][PA]$|^[SI][PA][LR]$")
NOT_CLINICAL = "Research use only; not for clinical use."


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """One output class: its display name and colour (``#rrggbb``)."""

    name: str
    color: str


@dataclasses.dataclass
class ModelCard:
    """Everything a user and the pipeline need to know about a set of weights.

    Attributes
    ----------
    name : str
        Unique short name, e.g. ``"unet-ct-organs"``.
    task : str
        ``"segmentation"``, ``"detection"`` (a detector, see :mod:`napari_medattn.detection`)
        ``"classification"`` (one probability per scan, see
        :mod:`napari_medattn.classification`) or ``"registration"`` (a pair in, a velocity
        field out, see :mod:`napari_medattn.registration.learned`; ``classes`` then names
        the labels its training loss aligned, ``in_channels`` is 2: fixed and moving).
    architecture : str
        Name for :func:`napari_medattn.models.create`.
    config : dict
        Keyword arguments of the architecture.
    classes : list of ClassInfo
        Output classes by channel index; class 0 is background.
    modality : str
        Expected DICOM modality: ``"CT"``, ``"MR"``, ``"PT"`` or ``"OT"``.
    patch_size : tuple of int
        Window size in voxels along the array axes of ``orientation``.
    spacing : tuple of float or None
        Voxel size in mm the network was trained at, per array axis (None: native).
    orientation : str or None
        Orientation code (LPS letters, e.g. ``"RAS"``) the array axes are turned to
        before inference (None: as stored).
    normalization : dict
        Intensity normalisation, ``{"scheme": ..., **parameters}``, see
        :func:`napari_medattn.inference.preprocess.normalize_intensity`.
    in_channels : int
        Input channels.
    training_data : str
        What it was trained on and where that data comes from.
    training_procedure : str
        How the weights were made (script, command, epochs).
    metrics : dict
        Measured figures by name (e.g. ``{"dice_liver": 0.93}``).
    evaluated_on : str
        Data the metrics were measured on.
    license : str
        Licence of the weights (SPDX identifier where one exists).
    intended_use : str
        What the model is for, and that it is not for clinical use.
    weights_sha256 : str or None
        SHA-256 of the weights file, checked on load when present.
    """

    name: str
    architecture: str
    classes: list[ClassInfo]
    patch_size: tuple[int, ...]
    task: str = "segmentation"
    config: dict = dataclasses.field(default_factory=dict)
    modality: str = "OT"
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    normalization: dict = dataclasses.field(default_factory=lambda: {"scheme": "none"})
    in_channels: int = 1
    training_data: str = "unknown"
    training_procedure: str = "unknown"
    metrics: dict = dataclasses.field(default_factory=dict)
    evaluated_on: str = "unknown"
    license: str = "unknown"
    intended_use: str = NOT_CLINICAL
    weights_sha256: str | None = None
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        self.classes = [c if isinstance(c, ClassInfo) else _class_info(c) for c in self.classes]
        self.patch_size = tuple(self.patch_size)
        if self.spacing is not None:
            self.spacing = tuple(self.spacing)
        self.validate()

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self) -> None:
        """Raise ModelError with one sentence on the first invalid field."""
        who = f"Model card {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelError("A model card needs a non-empty name.")
        if self.task not in TASKS:
            raise ModelError(f"{who} has task {self.task!r}; supported: {', '.join(TASKS)}.")
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ModelError(f"{who} names no architecture.")
        if not isinstance(self.config, dict):
            raise ModelError(f"{who}: 'config' must be an object of architecture arguments.")
        if len(self.classes) < 1:
            raise ModelError(f"{who} lists no classes.")
        if self.modality not in MODALITIES:
            raise ModelError(f"{who} has modality {self.modality!r}; use one of "
                             f"{', '.join(MODALITIES)}.")
        if len(self.patch_size) not in (2, 3) or not all(
                isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in self.patch_size):
            raise ModelError(f"{who} has patch size {list(self.patch_size)}; it must be 2 or 3 "
                             f"positive integers.")
        if self.spacing is not None and (
                len(self.spacing) != len(self.patch_size)
                or not all(isinstance(s, (int, float)) and s > 0 for s in self.spacing)):
            raise ModelError(f"{who} has spacing {list(self.spacing)}; it must be "
                             f"{len(self.patch_size)} positive numbers in mm.")
        if self.orientation is not None and not _ORIENTATION.match(str(self.orientation)):
            raise ModelError(f"{who} has orientation {self.orientation!r}; use three letters "
                             f"such as 'RAS' or 'LPS'.")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ModelError(f"{who} must have at least one input channel.")
        if not isinstance(self.metrics, dict) or not all(
                isinstance(v, (int, float)) for v in self.metrics.values()):
            raise ModelError(f"{who}: 'metrics' must map names to numbers.")
        if self.weights_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}",
                                                                str(self.weights_sha256)):
            raise ModelError(f"{who} has a malformed weights_sha256 (64 hex digits expected).")
        try:
            validate_normalization(self.normalization)
        except ModelError as error:
            raise ModelError(f"{who}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["spacing"] = list(self.spacing) if self.spacing is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Build and validate a card from its JSON object."""
        if not isinstance(data, Mapping):
            raise ModelError("A model card must be a JSON object.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ModelError(f"The model card has unknown field(s) {', '.join(unknown)}; "
                             f"check their spelling.")
        missing = [f for f in ("name", "architecture", "classes", "patch_size") if f not in data]
        if missing:
            raise ModelError(f"The model card lacks the field(s) {', '.join(missing)}.")
        if data.get("card_version", CARD_VERSION) > CARD_VERSION:
            raise ModelError("The model card was written by a newer napari-medattn; "
                             "update the package to read it.")
        if not isinstance(data["classes"], Sequence) or isinstance(data["classes"], str):
            raise ModelError("The model card's 'classes' must be a list.")
        try:
            return cls(**dict(data))
        except TypeError as error:
            raise ModelError(f"The model card is malformed: {error}.") from None

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ModelError(f"The model card is not valid JSON ({error.msg} at line "
                             f"{error.lineno}).") from None
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ModelError(f"Cannot read the model card {path}: {error.strerror}.") from None
        return cls.from_json(text)


def _class_info(value: Any) -> ClassInfo:
    if isinstance(value, Mapping) and set(value) == {"name", "color"}:
        name, color = value["name"], value["color"]
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        name, color = value
    else:
        raise ModelError(f"A class must be {{'name': ..., 'color': '#rrggbb'}}, got {value!r}.")
    if not isinstance(name, str) or not name:
        raise ModelError(f"A class needs a non-empty name, got {name!r}.")
    if not isinstance(color, str) or not _COLOUR.match(color):
        raise ModelError(f"Class {name!r} has colour {color!r}; use '#rrggbb'.")
    return ClassInfo(name, color.lower())


#: Distinct colours for classes a checkpoint names without colours (background black).
DEFAULT_COLOURS = ("#000000", "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
                   "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080")


def default_classes(names: Sequence[str]) -> list[ClassInfo]:
    """Classes with the given names and the default palette (cycled past 12 classes)."""
    colours = DEFAULT_COLOURS
    return [ClassInfo(name, colours[0] if i == 0 else colours[1 + (i - 1) % (len(colours) - 1)])
            for i, name in enumerate(names)]


#: Normalisation schemes a card may name, and their parameters (name -> (required,
#: optional)); ``inference.preprocess.normalize_intensity`` implements each one. They are
#: part of the card's contract, so the card checks them without importing the inference
#: code (which imports the card).
NORMALIZATION_SCHEMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), ()),
    "ct_window": (("window",), ()),
    "zscore": ((), ("percentiles",)),
    "percentile": ((), ("percentiles",)),
    "suv": (("max",), ()),
}


def validate_normalization(spec: Mapping[str, Any]) -> None:
    """Raise ModelError unless ``spec`` is a known scheme with valid parameters."""
    if not isinstance(spec, Mapping) or "scheme" not in spec:
        raise ModelError("the normalization must be an object with a 'scheme'.")
    scheme = spec["scheme"]
    if scheme not in NORMALIZATION_SCHEMES:
        raise ModelError(f"unknown normalization scheme {scheme!r}; use one of "
                         f"{', '.join(NORMALIZATION_SCHEMES)}.")
    required, optional = NORMALIZATION_SCHEMES[scheme]
    given = set(spec) - {"scheme"}
    if set(required) - given:
        raise ModelError(f"normalization {scheme!r} needs {', '.join(required)}.")
    if given - set(required) - set(optional):
        raise ModelError(f"normalization {scheme!r} does not take "
                         f"{', '.join(sorted(given - set(required) - set(optional)))}.")
    for key in ("window", "percentiles"):
        if key in spec:
            pair = spec[key]
            if (not isinstance(pair, Sequence) or len(pair) != 2
                    or not all(isinstance(v, (int, float)) for v in pair) or pair[0] >= pair[1]):
                raise ModelError(f"normalization {key!r} must be two increasing numbers, "
                                 f"got {pair!r}.")
    if "max" in spec and (not isinstance(spec["max"], (int, float)) or spec["max"] <= 0):
        raise ModelError(f"normalization 'max' must be a positive SUV, got {spec['max']!r}.")
