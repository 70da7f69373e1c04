"""MONAI bundles read without executing code: network, weights location and model card.

A bundle is a folder (or a ``.zip`` of one) holding ``configs/inference.json`` (or
``.yaml``), optionally ``configs/metadata.json``, and ``models/model.pt``. Its
``network_def`` must be a class of ``monai.networks.nets`` with literal arguments only:
references are resolved, but expressions are never evaluated and nothing from the file is
instantiated. The bundle's ``channel_def`` labels and preprocessing (spacing, orientation,
intensity scaling) become a :class:`~napari_medattn.models.card.ModelCard`.

Reading the weights into the network, and checking their hash, is the registry's job
(:func:`napari_medattn.models.registry.load_model`), shared with the other formats.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from napari_medattn.errors import ModelError
from napari_medattn.models.card import ModelCard, default_classes

MONAI_PREFIX = "monai:"

_MONAI_MODALITY = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PT", "PT": "PT"}


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A parsed MONAI bundle: its folder, parsed configs and network definition.

    Attributes
    ----------
    folder : Path
        The bundle's root folder (a temporary one while a zip is open).
    parser : monai.bundle.ConfigParser
        The inference config, with the metadata under ``_meta_`` when present.
    target : str
        Class name of the network in ``monai.networks.nets``.
    kwargs : dict
        Literal keyword arguments of that class.
    """

    folder: Path
    parser: Any
    target: str
    kwargs: dict

    def network(self) -> nn.Module:
        """A freshly initialised network as the bundle defines it (no weights loaded)."""
        return create_monai(self.target, self.kwargs)

    def weights(self) -> Path:
        """The bundle's weights file (``models/model.safetensors``, ``.pt`` or ``.pth``)."""
        return _bundle_weights(self.folder)

    def card(self) -> ModelCard:
        """A model card derived from the bundle's metadata and preprocessing."""
        return _bundle_card(self.folder, self.parser, self.target, self.kwargs)


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a MONAI bundle folder, or a zip holding one (a ``configs`` folder)."""
    if path.is_dir():
        return (path / "configs").is_dir()
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(Path(n).parent.name == "configs" for n in archive.namelist())
    return False


def create_monai(name: str, config: Mapping[str, Any]) -> nn.Module:
    """Build the network ``name`` of ``monai.networks.nets`` with keyword arguments ``config``.

    Raises
    ------
    ModelError
        If MONAI is missing, ``name`` is not a MONAI network, or ``config`` does not fit it.
    """
    try:
        from monai.networks import nets
    except ImportError:
        raise ModelError("This model is a MONAI network; install MONAI to load it.") from None
    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"{name!r} is not a network of monai.networks.nets.")
    try:
        return cls(**config)
    except (TypeError, ValueError) as error:
        raise ModelError(f"MONAI's {name} does not accept this config: {error}.") from None


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[Bundle]:
    """Parse the bundle folder or zip at ``path``; a zip is unpacked for the ``with`` block.

    Raises
    ------
    ModelError
        If MONAI is missing, a zip member would land outside the extraction folder, the
        inference config or ``network_def`` is missing, or the network definition is not
        a literal call of a ``monai.networks.nets`` class.
    """
    try:
        from monai.bundle import ConfigParser
    except ImportError:
        raise ModelError("Loading a MONAI bundle needs MONAI; install it "
                         "(pip install monai).") from None
    if path.is_file():
        with (tempfile.TemporaryDirectory() as tmp,
              open_bundle(_extract_zip(path, Path(tmp))) as bundle):
            yield bundle
        return
    configs = path / "configs"
    config_file = next((configs / f"inference.{ext}" for ext in ("json", "yaml", "yml")
                        if (configs / f"inference.{ext}").is_file()), None)
    meta_file = configs / "metadata.json"
    if config_file is None:
        raise ModelError(f"The MONAI bundle {path.name} has no configs/inference.json.")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    if meta_file.is_file():
        parser.read_meta(str(meta_file))
    if "network_def" not in parser.config:
        raise ModelError(f"The MONAI bundle {path.name} defines no network_def.")
    # Resolve references only: expressions are not evaluated and nothing is instantiated.
    definition = parser.get_parsed_content("network_def", instantiate=False, eval_expr=False)
    definition = definition.get_config() if hasattr(definition, "get_config") else definition
    target, kwargs = _network_from_definition(definition, path.name)
    yield Bundle(path, parser, target, kwargs)


def _extract_zip(path: Path, into: Path) -> Path:
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            target = (into / member.filename).resolve()
            if not target.is_relative_to(into.resolve()):
                raise ModelError(f"The bundle {path.name} holds a path outside itself "
                                 f"({member.filename}); refusing to extract it.")
        archive.extractall(into)
    roots = [p.parent for p in into.rglob("configs") if p.is_dir()]
    if not roots:
        raise ModelError(f"The zip {path.name} holds no MONAI bundle (no configs folder).")
    return min(roots, key=lambda p: len(p.parts))


def _is_literal(value: Any) -> bool:
    """Plain JSON data: no expression (``$``), macro (``%``) or unresolved reference."""
    if isinstance(value, str):
        return not value.startswith(("$", "%", "@"))
    if isinstance(value, Mapping):
        return all(_is_literal(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_literal(v) for v in value)
    # MONAI hands back unevaluated expressions as ConfigExpression objects.
    return value is None or isinstance(value, (bool, int, float))


def _network_from_definition(definition: Any, name: str) -> tuple[str, dict]:
    if not isinstance(definition, Mapping) or "_target_" not in definition:
        raise ModelError(f"The network_def of bundle {name} is not a component with _target_.")
    target = str(definition["_target_"])
    if "." in target:
        if not target.startswith("monai.networks.nets."):
            raise ModelError(f"The bundle {name} builds {target}; only networks of "
                             f"monai.networks.nets are built from bundles.")
        target = target.rsplit(".", 1)[1]
    kwargs = {k: v for k, v in definition.items() if not k.startswith("_")}
    if set(definition) - set(kwargs) - {"_target_"}:
        raise ModelError(f"The network_def of bundle {name} uses "
                         f"{', '.join(sorted(set(definition) - set(kwargs) - {'_target_'}))}, "
                         f"which napari-medattn does not run.")
    if not _is_literal(kwargs):
        raise ModelError(f"The network_def of bundle {name} contains a Python expression; "
                         f"napari-medattn refuses to execute code from a model file.")
    return target, kwargs


def _bundle_weights(path: Path) -> Path:
    for candidate in ("model.safetensors", "model.pt", "model.pth"):
        if (path / "models" / candidate).is_file():
            return path / "models" / candidate
    if any((path / "models").glob("*.ts")):
        raise ModelError(f"The bundle {path.name} holds only a TorchScript model, which is "
                         f"code; it needs models/model.pt.")
    raise ModelError(f"The bundle {path.name} has no weights (models/model.pt).")


def _bundle_card(path: Path, parser, target: str, kwargs: dict) -> ModelCard:
    meta = parser.config.get("_meta_", {}) if isinstance(parser.config, dict) else {}
    data_format = meta.get("network_data_format", {})
    image = data_format.get("inputs", {}).get("image", {})
    pred = data_format.get("outputs", {}).get("pred", {})
    channel_def = pred.get("channel_def") or {}
    classes_count = int(pred.get("num_channels") or kwargs.get("out_channels") or len(channel_def))
    names = [str(channel_def.get(str(i), "background" if i == 0 else f"class {i}"))
             for i in range(classes_count)]
    transforms = _bundle_transforms(parser.config)
    patch = _bundle_patch(parser.config, image)
    if patch is None:
        raise ModelError(f"The bundle {path.name} names no window size (inferer roi_size or "
                         f"input spatial_shape); pass a card.")
    spacing = transforms.get("pixdim")
    unmapped = transforms.get("unmapped", [])
    return ModelCard(
        name=str(meta.get("name") or path.name),
        architecture=MONAI_PREFIX + target,
        config=kwargs,
        classes=default_classes(names),
        patch_size=patch,
        modality=_MONAI_MODALITY.get(str(image.get("modality", "")).upper(), "OT"),
        spacing=tuple(float(s) for s in spacing) if spacing else None,
        orientation=transforms.get("axcodes"),
        normalization=transforms.get("normalization", {"scheme": "none"}),
        in_channels=int(image.get("num_channels") or kwargs.get("in_channels", 1)),
        training_data=str(meta.get("data_source", "unknown")),
        training_procedure=f"MONAI bundle {meta.get('version', '')}".strip()
        + (f"; preprocessing not carried over: {', '.join(unmapped)}" if unmapped else ""),
        license=str(meta.get("copyright", "unknown")),
        intended_use=str(meta.get("description", "")) + " Research use only; not for "
                                                         "clinical use.",
    )


def _bundle_transforms(config: Mapping) -> dict[str, Any]:
    """Spacing, orientation and intensity scaling named in the bundle's preprocessing."""
    found: dict[str, Any] = {"unmapped": []}
    stack = [config.get("preprocessing", {})]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
            continue
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("_target_", "")).rsplit(".", 1)[-1].rstrip("d")
        if name == "Spacing" and isinstance(item.get("pixdim"), list):
            found["pixdim"] = item["pixdim"]
        elif name == "Orientation" and isinstance(item.get("axcodes"), str):
            found["axcodes"] = item["axcodes"]
        elif (name == "ScaleIntensityRange" and item.get("clip")
              and item.get("b_min", 0) == 0 and item.get("b_max", 1) == 1):
            found["normalization"] = {"scheme": "ct_window",
                                      "window": [float(item["a_min"]), float(item["a_max"])]}
        elif name == "NormalizeIntensity":
            found["normalization"] = {"scheme": "zscore"}
            found["unmapped"].append("NormalizeIntensity (approximated by a robust z-score)")
        elif name == "ScaleIntensityRangePercentiles" and item.get("clip"):
            found["normalization"] = {"scheme": "percentile",
                                      "percentiles": [float(item["lower"]),
                                                      float(item["upper"])]}
        elif name in ("ScaleIntensityRange", "ScaleIntensityRangePercentiles"):
            found["unmapped"].append(name)
        stack.extend(v for k, v in item.items() if isinstance(v, (list, Mapping)))
    return found


def _bundle_patch(config: Mapping, image: Mapping) -> tuple[int, ...] | None:
    inferer = config.get("inferer", {})
    for candidate in (inferer.get("roi_size") if isinstance(inferer, Mapping) else None,
                      image.get("spatial_shape")):
        if isinstance(candidate, list) and candidate and all(
                isinstance(v, int) and v > 0 for v in candidate):
            return tuple(candidate)
    return None
