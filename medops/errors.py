"""One error hierarchy for the whole platform.

Every error a user can cause carries the HTTP status the gateway answers with, so a service
maps any of them to a response with one handler and never leaks a traceback.
"""

from __future__ import annotations


class MedopsError(Exception):
    """Base of every medops error; ``status_code`` is the HTTP status it maps to."""

    status_code: int = 500

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        return self.message


class InvalidInputError(MedopsError):
    """The caller sent something malformed (bad file, wrong shape, bad parameter)."""

    status_code = 400


class ImageReadError(InvalidInputError):
    """An image file could not be decoded; the message names the file and the fault."""


class DatasetError(InvalidInputError):
    """A dataset is missing, empty, or inconsistent (unpaired masks, leakage, ...)."""


class UnauthorizedError(MedopsError):
    status_code = 401


class ForbiddenError(MedopsError):
    status_code = 403


class NotFoundError(MedopsError):
    status_code = 404


class ConflictError(MedopsError):
    status_code = 409


class PayloadTooLargeError(MedopsError):
    status_code = 413


class UnsupportedMediaTypeError(MedopsError):
    status_code = 415


class PHIError(MedopsError):
    """De-identification refused the input (e.g. burned-in annotation)."""

    status_code = 422


class TrainingError(MedopsError):
    """Training could not proceed (NaN loss, single-class data, ...)."""

    status_code = 422


class BackendUnavailableError(MedopsError):
    status_code = 503


class RegistryUnavailableError(BackendUnavailableError):
    """The model registry (MLflow) cannot be reached."""


class BackendTimeoutError(MedopsError):
    status_code = 504
