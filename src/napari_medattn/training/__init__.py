"""Training data: datasets on disk, on-the-fly augmentation, and synthetic cases.

Modules (import the one you need; each is plain functions and classes over numpy arrays,
torch tensors and :class:`~napari_medattn.io.Volume`):

* :mod:`~napari_medattn.training.datasets`: cases from a Medical Segmentation Decathlon /
  nnU-Net folder or a CSV, checked up front (:func:`~.datasets.load_cases`; volumes in
  memory: :func:`~.datasets.make_case`), prepared as a
  model card prescribes (:func:`~.datasets.prepare_case`), served as random patches
  (:class:`~.datasets.PatchDataset`) or whole cases for validation.
* :mod:`~napari_medattn.training.augment`: batched torch augmentation on the tensor's
  device, configured by a JSON-serialisable dict (:class:`~.augment.Compose`).
* :mod:`~napari_medattn.training.tensor_ops`: the torch primitives augmentation and
  synthesis share (seeded draws, Gaussian blur, warps, smooth and bias fields).
* :mod:`~napari_medattn.training.synthesis`: MNI152 tissue labels
  (:func:`~.synthesis.mni152_tissue_labels`), label-to-image synthesis, smooth
  deformations with their fields, and the generator of synthetic brain training cases
  (:func:`~.synthesis.synthetic_brain_cases`).
* :mod:`~napari_medattn.training.lesions`: tumour-like lesions (:func:`~.lesions.add_tumour`)
  rendered per MR contrast, and whole multi-contrast tumour cases
  (:func:`~.lesions.synthetic_tumour_case`).
"""
