"""Synthetic training data from real anatomy, deterministic from a seed.

Everything here starts from the MNI ICBM152 2009a template that nilearn installs with
itself (``nilearn.datasets.load_mni152_*`` read bundled files; ``fetch_*`` is never
called, nothing is downloaded).

* :func:`mni152_tissue_labels`: the template T1 and a label map 0 background, 1 CSF,
  2 grey matter (GM), 3 white matter (WM).
* Label-to-image synthesis (the SynthSeg idea, for contrast-agnostic models):
  :func:`draw_intensity_model` draws a Gaussian per label, :func:`render_labels` paints
  it and :func:`degrade` adds partial-volume blur, a bias field, a random acquisition
  resolution and noise (:class:`Degradation`).
* Tumour-like lesions and their MR contrasts live in :mod:`~napari_medattn.training.lesions`.
* Smooth deformations with their known fields: :func:`random_deformation` (LPS mm, on
  the volume's grid) and :func:`apply_deformation` (labels nearest).
* :func:`synthetic_brain_cases`: a stream of deformed, re-rendered training cases.

Every function takes a ``seed`` (an int or a ``numpy.random.Generator``) and draws all
its randomness from it: the same seed gives the same voxels.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from napari_medattn.errors import DimensionError, GeometryError
from napari_medattn.inference.resample import LINEAR, resample_to_grid, spacing_grid
from napari_medattn.io.volume import RAS_TO_LPS, Volume
from napari_medattn.training.tensor_ops import (
    bias_field,
    bias_monomials,
    gaussian_blur,
    identity_coordinates,
    smooth_field,
    uniform,
    warp,
)

#: Label values of the tissue map.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF", 2: "grey matter", 3: "white matter"}
#: The template's intensities (0..1 in nilearn) times this look like a 12-bit T1 scan.
MR_SCALE = 1000.0


@functools.lru_cache(maxsize=2)
def _mni152_arrays(resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (0..1), labels and the RAS affine of the template; cached, never handed out."""
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = datasets.load_mni152_gm_template(resolution=resolution).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=resolution).get_fdata()
    brain = datasets.load_mni152_brain_mask(resolution=resolution).get_fdata() > 0
    # CSF is what the brain mask holds beyond grey and white matter: its probability is the
    # remainder 1 - p(GM) - p(WM); each brain voxel takes its most probable class.
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~brain] = 0
    data = t1.get_fdata()
    for array in (data, labels):
        array.setflags(write=False)
    return data, labels, np.asarray(t1.affine, dtype=np.float64)


def mni152_tissue_labels(resolution: int = 2) -> tuple[Volume, Volume]:
    """The MNI152 2009a T1 template and its 4-class tissue label map.

    Inside nilearn's brain mask each voxel takes the most probable of CSF, grey matter
    and white matter, where the CSF probability is the remainder
    ``clip(1 - p(GM) - p(WM), 0, 1)`` of nilearn's grey- and white-matter probability
    maps (the mask holds brain tissue and CSF; what is neither GM nor WM there is CSF).
    Outside the mask: 0. This is a training and display label map, not an anatomical CSF
    segmentation: the template's smooth GM map makes the GM class generous (about 1.09 L
    at 1 mm, WM about 0.64 L, CSF about 0.16 L).

    Parameters
    ----------
    resolution : {1, 2}
        Voxel size in mm: 1 gives 197 x 233 x 189 voxels, 2 gives 99 x 117 x 95.

    Returns
    -------
    t1 : Volume
        float32 intensities, the template's 0..1 times :data:`MR_SCALE` (a 12-bit T1
        scale), modality ``"MR"``; the affine is the template's, in LPS mm.
    labels : Volume
        uint8 on the same grid, values of :data:`TISSUE_LABELS`, modality ``"SEG"``.

    Raises
    ------
    DimensionError
        ``resolution`` is neither 1 nor 2.
    """
    if resolution not in (1, 2):
        raise DimensionError(f"The MNI152 template comes at 1 or 2 mm, not {resolution!r}.")
    data, labels, affine_ras = _mni152_arrays(resolution)
    affine = RAS_TO_LPS @ affine_ras
    name = f"MNI152 2009a {resolution} mm"
    t1 = Volume((data * MR_SCALE).astype(np.float32), affine, "MR",
                {"name": f"{name} T1", "units": "a.u."})
    tissue = Volume(labels.copy(), affine.copy(), "SEG",
                    {"name": f"{name} tissue labels", "labels": dict(TISSUE_LABELS)})
    return t1, tissue


# ----------------------------------------------------------------- label-to-image synthesis


@dataclasses.dataclass(frozen=True)
class Degradation:
    """How a rendered image is made to look acquired; each step is skipped when off.

    Attributes
    ----------
    blur_mm : (float, float)
        Range of the partial-volume Gaussian blur, standard deviation in mm.
    bias_strength : float
        Coefficients of the log bias polynomial are uniform in ``±bias_strength`` (see
        :func:`napari_medattn.training.tensor_ops.bias_field`); 0 for none.
    resolution_mm : (float, float)
        Range of the simulated acquisition voxel size in mm, drawn per axis; the image is
        resampled there and back with the package's resampler. Values at or below the
        grid's spacing leave that axis alone. The default reaches the 4-5 mm voxels of
        clinical 2D acquisitions (dipy's sample b0/T2-weighted volume is 4 x 4 x 5 mm).
    noise : (float, float)
        Range of the Gaussian noise standard deviation, as a fraction of the image's
        99th intensity percentile.
    """

    blur_mm: tuple[float, float] = (0.0, 1.0)
    bias_strength: float = 0.3
    resolution_mm: tuple[float, float] = (1.0, 5.0)
    noise: tuple[float, float] = (0.0, 0.04)

    @classmethod
    def none(cls) -> Degradation:
        """No blur, bias, resolution loss or noise: the rendered intensities as drawn."""
        return cls(blur_mm=(0.0, 0.0), bias_strength=0.0, resolution_mm=(0.0, 0.0),
                   noise=(0.0, 0.0))


def draw_intensity_model(label_values: Sequence[int], seed: int | np.random.Generator, *,
                         mean_range: tuple[float, float] = (0.0, MR_SCALE),
                         std_range: tuple[float, float] = (0.0, 0.08 * MR_SCALE)
                         ) -> dict[int, tuple[float, float]]:
    """Draw a random Gaussian per label (the SynthSeg idea): ``{value: (mean, std)}``.

    Parameters
    ----------
    label_values : sequence of int
    seed : int or numpy Generator
    mean_range, std_range : (float, float)
        Uniform ranges of each label's mean and standard deviation, in image units
        (default: a 12-bit-like MR scale, see :data:`MR_SCALE`).
    """
    rng = np.random.default_rng(seed)
    return {int(v): (float(rng.uniform(*mean_range)), float(rng.uniform(*std_range)))
            for v in label_values}


def render_labels(labels: Volume, intensities: Mapping[int, tuple[float, float]],
                  seed: int | np.random.Generator, *,
                  degradation: Degradation = Degradation(), modality: str = "MR") -> Volume:
    """Render a label map as an image: voxels of label ``v`` ~ N(mean_v, std_v), then degrade.

    Steps, in order: per-label Gaussian intensities, partial-volume blur, multiplicative
    bias field, random acquisition resolution, additive Gaussian noise (see
    :class:`Degradation`).

    Parameters
    ----------
    labels : Volume
        3D integer label map.
    intensities : mapping of int to (float, float)
        Mean and standard deviation per label value, in image units (e.g. from
        :func:`draw_intensity_model`, or
        :data:`~napari_medattn.training.lesions.MODALITY_CONTRAST` for a given contrast).
    seed : int or numpy Generator
        Every random draw comes from it.
    degradation : Degradation
    modality : str

    Returns
    -------
    Volume
        float32 image on the label map's grid; ``meta["synthesis"]`` records the
        intensities and the drawn degradation parameters.

    Raises
    ------
    DimensionError
        A label value without an intensity.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(labels.data)
    present = np.unique(values)
    missing = sorted(set(present.tolist()) - set(intensities))
    if missing:
        raise DimensionError(f"No intensity is given for label value(s) {missing}.")
    table_mean = np.zeros(int(present.max()) + 1, dtype=np.float32)
    table_std = np.zeros_like(table_mean)
    for v in present:
        table_mean[v], table_std[v] = intensities[int(v)]
    noise = rng.standard_normal(values.shape, dtype=np.float32)
    image = table_mean[values] + table_std[values] * noise
    volume = Volume(image, labels.affine.copy(), modality,
                    {"name": f"{labels.name} rendered", "units": "a.u."})
    degraded, drawn = degrade(volume, rng, degradation)
    degraded.meta["synthesis"] = {"intensities": {int(k): list(v) for k, v in
                                                  intensities.items()}, **drawn}
    return degraded


def degrade(volume: Volume, seed: int | np.random.Generator,
            degradation: Degradation = Degradation()) -> tuple[Volume, dict[str, Any]]:
    """Blur, bias, coarsen and add noise to an image as :class:`Degradation` says.

    Returns
    -------
    Volume
        float32 image on the same grid.
    dict
        The drawn parameters (JSON-serialisable): ``blur_mm``, ``bias_coefficients``,
        ``resolution_mm`` (per axis), ``noise_std`` (image units).
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    spacing = volume.spacing
    image = torch.from_numpy(np.asarray(volume.data, dtype=np.float32))[None, None]
    blur = float(rng.uniform(*degradation.blur_mm))
    if blur > 0:
        image = gaussian_blur(image, (blur / spacing).tolist())
    coefficients = uniform(generator, (1, len(bias_monomials())), -degradation.bias_strength,
                           degradation.bias_strength, "cpu")
    if degradation.bias_strength > 0:
        image = image * bias_field(coefficients, image.shape[2:])
    data = image[0, 0].numpy()
    resolution = rng.uniform(*degradation.resolution_mm, size=3)
    coarse = np.maximum(resolution, spacing)
    if np.any(coarse > spacing * (1 + 1e-6)):
        # Average over the coarse voxel first (slice profile), then sample it and come back.
        sigma = np.sqrt(np.maximum((coarse / spacing) ** 2 - 1, 0)) / 2.355
        image = gaussian_blur(torch.from_numpy(data)[None, None], sigma.tolist())
        fine = Volume(image[0, 0].numpy(), volume.affine, volume.modality)
        grid_affine, grid_shape = spacing_grid(volume.affine, volume.spatial_shape,
                                               tuple(coarse))
        low = resample_to_grid(fine, grid_affine, grid_shape, order=LINEAR)
        data = resample_to_grid(low, volume.affine, volume.spatial_shape, order=LINEAR).data
    noise_std = float(rng.uniform(*degradation.noise)) * float(np.percentile(data, 99))
    if noise_std > 0:
        data = data + noise_std * rng.standard_normal(data.shape, dtype=np.float32)
    drawn = {"blur_mm": blur,
             "bias_coefficients": coefficients[0].tolist() if degradation.bias_strength > 0
             else [],
             "resolution_mm": coarse.tolist(), "noise_std": noise_std}
    meta = dict(volume.meta)
    return Volume(np.ascontiguousarray(data, dtype=np.float32), volume.affine.copy(),
                  volume.modality, meta), drawn


# ---------------------------------------------------------------------------- deformations


def random_deformation(volume: Volume, seed: int | np.random.Generator, *,
                       magnitude_mm: float = 4.0, control_spacing_mm: float = 24.0
                       ) -> np.ndarray:
    """A smooth random displacement field on a volume's grid, in LPS mm.

    Made by :func:`napari_medattn.training.tensor_ops.smooth_field` (random vectors on a
    control grid, upsampled and blurred) and scaled so its largest displacement is
    ``magnitude_mm``. Keep ``magnitude_mm`` well below ``control_spacing_mm / 2`` for a
    fold-free deformation.

    Parameters
    ----------
    volume : Volume
        Provides the grid (shape and affine).
    seed : int or numpy Generator
    magnitude_mm : float
        Largest displacement length in mm.
    control_spacing_mm : float
        Distance between control points in mm (larger is smoother).

    Returns
    -------
    ndarray, float32, shape ``(3, a0, a1, a2)``
        ``u[:, i]`` is the LPS displacement (mm) of voxel ``i``: the deformed volume at
        the patient point ``x`` of voxel ``i`` shows the source at ``x + u[:, i]`` (a
        pull-back field, as in VoxelMorph); see :func:`apply_deformation`.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    field = smooth_field(generator, 1, volume.spatial_shape,
                         control_spacing=control_spacing_mm / float(volume.spacing.mean()),
                         magnitude=float(magnitude_mm), device="cpu")
    return field[0].numpy().astype(np.float32)


def apply_deformation(volume: Volume, displacement_mm: np.ndarray) -> Volume:
    """Deform a volume with a pull-back displacement field in LPS mm.

    ``out[i] = volume(x_i + u_i)`` where ``x_i`` is voxel ``i``'s patient point: images are
    interpolated linearly (float32 out), integer label maps by nearest neighbour (dtype
    kept); points falling outside the volume read 0.

    Parameters
    ----------
    volume : Volume
        3D, or 4D with frames first (each frame deformed alike).
    displacement_mm : ndarray ``(3, a0, a1, a2)``
        As returned by :func:`random_deformation`, on ``volume``'s grid.

    Returns
    -------
    Volume
        Same grid, modality and meta.

    Raises
    ------
    GeometryError
        The field is not on the volume's grid.
    """
    field = np.asarray(displacement_mm, dtype=np.float64)
    if field.shape != (3, *volume.spatial_shape):
        raise GeometryError(f"The displacement field has shape {field.shape}; the volume "
                            f"{volume.name} needs (3, {', '.join(map(str, volume.spatial_shape))}).")
    # mm displacement -> index displacement: solve A[:3, :3] @ d_index = u_mm.
    to_index = np.linalg.inv(volume.affine[:3, :3])
    steps = np.einsum("ij,jdhw->idhw", to_index, field).astype(np.float32)
    coordinates = torch.from_numpy(steps)[None] + identity_coordinates(volume.spatial_shape,
                                                                       "cpu")[None]
    data = np.asarray(volume.data)
    integer = np.issubdtype(data.dtype, np.integer)
    frames = data[None] if data.ndim == 3 else data
    source = torch.from_numpy(np.ascontiguousarray(
        frames.astype(np.int64 if integer else np.float32)))[None]
    out = warp(source, coordinates)[0].numpy()
    out = out.astype(data.dtype) if integer else out.astype(np.float32)
    return Volume(out[0] if data.ndim == 3 else out, volume.affine.copy(), volume.modality,
                  dict(volume.meta))


# ------------------------------------------------------------------------- training cases

#: Render-only layers around the brain in label-to-image cases (their target label is 0):
#: without them every synthetic head would be a bare brain on a flat background, unlike a
#: real scan with skull and scalp.
HEAD_LAYERS: dict[int, str] = {7: "skull", 8: "scalp"}


def head_layers(labels: Volume, seed: int | np.random.Generator, *,
                skull_mm: tuple[float, float] = (3.0, 7.0),
                scalp_mm: tuple[float, float] = (3.0, 8.0)) -> np.ndarray:
    """A render map: ``labels`` plus a skull shell (7) and a scalp shell (8) outside the brain.

    Parameters
    ----------
    labels : Volume
        Tissue labels; the brain is every non-zero voxel.
    seed : int or numpy Generator
    skull_mm, scalp_mm : (float, float)
        Uniform ranges of the shells' thickness in mm.

    Returns
    -------
    ndarray of uint8
        Same shape; the shells only replace background voxels.
    """
    rng = np.random.default_rng(seed)
    values = np.asarray(labels.data)
    outside = ndimage.distance_transform_edt(values == 0, sampling=labels.spacing)
    skull = float(rng.uniform(*skull_mm))
    scalp = skull + float(rng.uniform(*scalp_mm))
    out = values.astype(np.uint8).copy()
    out[(outside > 0) & (outside <= skull)] = 7
    out[(outside > skull) & (outside <= scalp)] = 8
    return out


def synthetic_brain_cases(n: int, seed: int = 0, *, resolution: int = 2,
                          synthetic_fraction: float = 0.5, deformation_mm: float = 4.0,
                          lesion_probability: float = 0.0,
                          degradation: Degradation = Degradation(),
                          ) -> Iterator[tuple[Volume, Volume]]:
    """Yield ``n`` synthetic brain training cases ``(image, labels)`` built on MNI152.

    Case ``i`` is drawn with ``numpy.random.default_rng((seed, i))`` alone, so any case
    can be remade without the others. Each case:

    1. deforms the template's tissue labels (and T1) by a fresh smooth field of largest
       displacement ``deformation_mm`` (:func:`random_deformation`);
    2. with probability ``lesion_probability`` adds a tumour
       (:func:`~napari_medattn.training.lesions.add_tumour`; the labels then hold
       :data:`~napari_medattn.training.lesions.LESION_LABELS` too);
    3. with probability ``synthetic_fraction`` renders the labels with a random Gaussian
       per label, skull and scalp shells included (:func:`draw_intensity_model`,
       :func:`head_layers`, :func:`render_labels`): any contrast, CSF bright or dark,
       which is what lets a model segment T2-weighted or b0 scans; otherwise it takes
       the deformed real T1, with random skull and scalp shells (:func:`head_layers`)
       and lesion voxels rendered with the T1 contrast of
       :data:`~napari_medattn.training.lesions.MODALITY_CONTRAST`;
    4. degrades the image (:class:`Degradation`: blur, bias, resolution, noise).

    Parameters
    ----------
    n : int
        Number of cases.
    seed : int
    resolution : {1, 2}
        Template voxel size in mm.
    synthetic_fraction : float
        Probability (0-1) of a label-to-image rendering rather than the real T1.
    deformation_mm : float
        Largest displacement of the random deformation in mm (0: none).
    lesion_probability : float
        Probability (0-1) of a tumour-like lesion.
    degradation : Degradation

    Yields
    ------
    image : Volume
        float32, modality ``"MR"``; ``meta["synthesis"]`` says how it was made (kind,
        seed, case, drawn parameters) and ``meta["displacement_mm"]`` holds the
        deformation field (see :func:`random_deformation`; ``None`` when off).
    labels : Volume
        uint8 on the same grid: :data:`TISSUE_LABELS` (and
        :data:`~napari_medattn.training.lesions.LESION_LABELS`).
    """
    # Imported here: lesions builds on this module's rendering, so a module-level import
    # would be circular.
    from napari_medattn.training.lesions import (
        CONTRAST_STD,
        MODALITY_CONTRAST,
        OEDEMA,
        add_tumour,
    )

    for name, value in (("synthetic_fraction", synthetic_fraction),
                        ("lesion_probability", lesion_probability)):
        if not 0 <= value <= 1:
            raise DimensionError(f"{name} must be in [0, 1], got {value}.")
    t1, tissue = mni152_tissue_labels(resolution)
    for case in range(int(n)):
        rng = np.random.default_rng((seed, case))
        field = None
        labels, image = tissue, t1
        if deformation_mm > 0:
            field = random_deformation(tissue, rng, magnitude_mm=deformation_mm)
            labels = apply_deformation(tissue, field)
        if rng.random() < lesion_probability:
            labels = add_tumour(labels, rng)
        kind = "label-to-image" if rng.random() < synthetic_fraction else "real T1"
        if kind == "label-to-image":
            render_map = Volume(head_layers(labels, rng), labels.affine, "SEG")
            intensities = draw_intensity_model(np.unique(render_map.data), rng)
            image = render_labels(render_map, intensities, rng, degradation=degradation)
            drawn = image.meta["synthesis"]
        else:
            if field is not None:
                image = apply_deformation(t1, field)
            # The template is skull-stripped: give it random skull and scalp shells, and
            # lesion voxels their T1 appearance.
            shells = head_layers(labels, rng)
            painted = np.asarray(labels.data) >= OEDEMA
            painted |= shells >= min(HEAD_LAYERS)
            intensities = {**draw_intensity_model(list(HEAD_LAYERS), rng),
                           **{v: (mean * MR_SCALE, CONTRAST_STD * MR_SCALE)
                              for v, mean in MODALITY_CONTRAST["T1"].items()}}
            rendered = render_labels(Volume(shells, labels.affine, "SEG"), intensities, rng,
                                     degradation=Degradation.none())
            image = Volume(np.where(painted, rendered.data, image.data).astype(np.float32),
                           image.affine, "MR", dict(image.meta))
            image, drawn = degrade(image, rng, degradation)
        image.meta.update(
            name=f"synthetic brain {seed}-{case}",
            synthesis={"kind": kind, "seed": int(seed), "case": case, **drawn},
            displacement_mm=field)
        out_labels = Volume(np.asarray(labels.data, dtype=np.uint8), labels.affine.copy(),
                            "SEG", {"name": f"synthetic brain {seed}-{case} labels",
                                    "labels": dict(labels.meta.get("labels", TISSUE_LABELS))})
        yield image, out_labels
