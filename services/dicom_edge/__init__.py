"""The DICOM edge: receives series from modalities and PACS over DIMSE, analyses them through
the clinical plane (``medops.clinical``) against a served model endpoint, and sends a DICOM
SEG and a TID 1500 Measurement Report back through a durable outbox."""
