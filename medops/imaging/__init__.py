"""Reading and writing medical images: DICOM, NIfTI, Analyze, MINC, NRRD, TIFF/PNG/JPEG."""

from medops.imaging.dicom import (
    DicomSeriesInfo,
    list_dicom_series,
    read_dicom_file,
    read_dicom_series,
    read_dicom_series_bytes,
    write_dicom_series,
)
from medops.imaging.formats import write_nifti
from medops.imaging.image import Image
from medops.imaging.io import read_image, read_image_bytes, sniff_format
from medops.imaging.lgg import LGG_SEQUENCES, lgg_patient_mask, lgg_patient_volume

__all__ = [
    "LGG_SEQUENCES",
    "DicomSeriesInfo",
    "Image",
    "lgg_patient_mask",
    "lgg_patient_volume",
    "list_dicom_series",
    "read_dicom_file",
    "read_dicom_series",
    "read_dicom_series_bytes",
    "read_image",
    "read_image_bytes",
    "sniff_format",
    "write_dicom_series",
    "write_nifti",
]
