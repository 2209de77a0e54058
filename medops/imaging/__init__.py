"""Reading and writing medical images: DICOM, NIfTI, Analyze, MINC, NRRD, TIFF/PNG/JPEG."""

from medops.imaging.image import Image

__all__ = ["Image"]
