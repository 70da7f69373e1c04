"""Training: datasets on disk, augmentation, synthetic cases, the loop, fine-tuning.

Modules (import the one you need; each is plain functions and classes over numpy arrays,
torch tensors and :class:`~napari_medattn.io.Volume`):

* :mod:`~napari_medattn.training.datasets`: cases from a Medical Segmentation Decathlon /
  nnU-Net folder or a CSV, checked up front (:func:`~.datasets.load_cases`; volumes in
  memory: :func:`~.datasets.make_case`).
* :mod:`~napari_medattn.training.patches`: cases prepared as a model card prescribes
  (:func:`~.patches.prepare_case`), served as random patches
  (:class:`~.patches.PatchDataset`) or whole cases for validation.
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
* :mod:`~napari_medattn.training.loop`: patch-based training of any library network
  (:func:`~.loop.train`) and whole-case validation; the card a run writes is built in
  :mod:`~napari_medattn.training.cards`, the state resuming needs in
  :mod:`~napari_medattn.training.checkpoint`; losses in :mod:`~napari_medattn.training.losses`.
* :mod:`~napari_medattn.training.finetune`: fine-tune a model on one image and its
  corrected labels and install it in the user's model folder (:func:`~.finetune.finetune`).
"""
