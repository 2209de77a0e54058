#!/usr/bin/env bash
# Debian packages the tests and benchmarks need (nginx: the reverse-proxy baseline of
# bench/gateway.py; chromium: the browser the page tests drive; orthanc + orthanc-dicomweb: the
# PACS of the DICOM edge tests; dcmtk: the modality side; dicom3tools: the dciodvfy validator;
# pixelmed-apps: DicomSRValidator for the TID 1500 report); installs only what is missing, so a
# second run is instant.
set -euo pipefail
packages=(prometheus postgresql nginx chromium orthanc orthanc-dicomweb dcmtk dicom3tools pixelmed-apps)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
