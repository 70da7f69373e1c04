"""``medattn fuse``: overlays resampled onto a base scan's grid, and fused PNG montages.

Mirrors the Fuse widget: for each overlay (PET, MR, another CT), the overlay on the base
grid as NIfTI (the base's geometry and header, the overlay's values) and one PNG montage
per view (axial, coronal, sagittal) of the fused slices, radiological.
"""

from __future__ import annotations

import argparse
import warnings

from napari_medattn.cli.common import VolumeOutput, add_inputs, run_over_inputs
from napari_medattn.errors import DimensionError

MODES = ("blend", "checkerboard", "difference")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuse", help="resample overlays onto a base scan and write fused montages",
        description="Bring each OVERLAY into BASE's patient space (through the exact "
                    "affines and, optionally, a registration transform), write it on the "
                    "base grid as NIfTI, and write PNG montages of fused axial, coronal and "
                    "sagittal slices for reports.")
    parser.add_argument("base", metavar="BASE", help="the base scan (its grid is the "
                        "reference): NIfTI file, DICOM file or series folder")
    add_inputs(parser)
    parser.add_argument("--transform", metavar="FILE",
                        help="ITK transform file or displacement-field NIfTI mapping base "
                             "(fixed) mm to overlay (moving) mm, e.g. from medattn register")
    parser.add_argument("--mode", choices=MODES, default="blend",
                        help="blend (coloured overlay over the grey base), checkerboard "
                             "(alternate tiles) or difference (default: blend)")
    parser.add_argument("--window", metavar="PRESET|LOW,HIGH",
                        help="overlay window: 'SUV 0-5', 'SUV 0-10', 'SUV 0-20', a CT "
                             "preset (brain, bone, ...) or LOW,HIGH in its units (default: "
                             "SUV 0-5 for PET, else the 0.5-99.5 percentiles)")
    parser.add_argument("--base-window", metavar="PRESET|LOW,HIGH",
                        help="base window, as --window (default: the base's opening window)")
    parser.add_argument("--colormap", default="hot",
                        help="overlay colour table: hot, inferno, pet_rainbow or gray "
                             "(default: hot)")
    parser.add_argument("--opacity", type=float, default=0.5,
                        help="overlay opacity in blend mode, 0-1 (default: 0.5)")
    parser.add_argument("--tile-mm", type=float, default=20.0,
                        help="checkerboard tile edge in mm (default: 20)")
    parser.add_argument("--slices", type=int, default=9,
                        help="slices per montage (default: 9)")
    parser.set_defaults(func=run_fuse)


def parse_window(text: str | None, volume) -> tuple[float, float]:
    """``--window`` as limits: a preset name or ``LOW,HIGH``; None gives the default for
    the volume's modality (SUV 0-5 for PET, the opening window otherwise)."""
    from napari_medattn.display.layers import header_window
    from napari_medattn.display.window_level import initial_limits
    from napari_medattn.fusion.compose import PET_PRESETS, preset_window

    if text is None:
        if volume.modality == "PT":
            return PET_PRESETS["SUV 0-5"]
        return initial_limits(volume.data, volume.modality, header_window(volume.meta))
    if "," in text:
        try:
            low, high = (float(part) for part in text.split(","))
        except ValueError:
            raise DimensionError(f"A window is a preset or LOW,HIGH, got {text!r}.") from None
        if not high > low:
            raise DimensionError(f"A window needs HIGH > LOW, got {text!r}.")
        return low, high
    return preset_window(text)


def run_fuse(args: argparse.Namespace) -> int:
    from napari_medattn.fusion.align import FrameOfReferenceWarning, overlay_on_grid
    from napari_medattn.fusion.compose import colormap_lut
    from napari_medattn.fusion.montage import fused_montages, write_png
    from napari_medattn.io import read_volume
    from napari_medattn.io.volume import require_3d

    base = require_3d(read_volume(args.base, modality=None))
    transform = None
    if args.transform:
        from napari_medattn.registration.itk_files import read_transform

        transform = read_transform(args.transform)
    lut = colormap_lut(args.colormap)
    base_window = parse_window(args.base_window, base)

    def one_volume(item: VolumeOutput) -> list[str]:
        item.record.add_input(args.base, base)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FrameOfReferenceWarning)
            moved = overlay_on_grid(item.volume, base, transform)
        item.record.notes.extend(str(w.message) for w in caught
                                 if issubclass(w.category, FrameOfReferenceWarning))
        overlay_window = parse_window(args.window, item.volume)
        item.record.details.update({"base_window": base_window,
                                    "overlay_window": overlay_window})
        written = [str(item.write_nifti("on_base", moved))]
        montages = fused_montages(base, moved, mode=args.mode, base_window=base_window,
                                  overlay_window=overlay_window, lut=lut,
                                  opacity=args.opacity, tile_mm=args.tile_mm,
                                  slices=args.slices)
        for view, rgb in montages.items():
            path = write_png(item.path(f"{args.mode}_{view}", ".png"), rgb)
            item.record.outputs[f"{args.mode}_{view}"] = path.name
            written.append(str(path))
        return written

    return run_over_inputs("fuse", args, one_volume, parameters={
        "base": str(args.base), "transform": args.transform, "mode": args.mode,
        "window": args.window, "base_window": args.base_window,
        "colormap": args.colormap, "opacity": args.opacity, "tile_mm": args.tile_mm,
        "slices": args.slices})
