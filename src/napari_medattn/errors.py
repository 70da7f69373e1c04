"""Typed errors of the library. Each carries one sentence a user can act on; the GUI and
the CLI show ``str(error)`` and nothing else."""


class MedAttnError(Exception):
    """Base class: bad input or a request the library refuses, with a user-facing message."""


class ReadError(MedAttnError):
    """A file or folder could not be read as a medical image (corrupt, unsupported, empty)."""


class GeometryError(MedAttnError):
    """The geometry is inconsistent or cannot be represented exactly (uneven spacing,
    missing slices, singular affine, mismatched grids)."""


class DimensionError(MedAttnError):
    """The array has the wrong number of dimensions or invalid values for the operation."""


class WriteError(MedAttnError):
    """A write was refused (it would overwrite the source) or failed."""


class ModelError(MedAttnError):
    """A model or its weights could not be created or loaded safely."""


class InsufficientMemoryError(MedAttnError):
    """A job would not fit in the free RAM or GPU memory, even after re-planning."""


class Cancelled(MedAttnError):
    """The user cancelled a running job; nothing was produced."""


class RegistrationError(MedAttnError):
    """A registration diverged (metric worsening or not finite, folding out of control)."""


class ClusterError(MedAttnError):
    """A Dask cluster for a cohort run could not be reached or cannot run the task."""


class PacsError(MedAttnError):
    """A DICOMweb server could not be reached, timed out, or refused the request."""
