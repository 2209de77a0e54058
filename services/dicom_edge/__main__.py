from services.dicom_edge.cli import dicom

dicom()
