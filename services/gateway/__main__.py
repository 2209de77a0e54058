"""``python -m services.gateway``: the same as ``medops serve``."""

from .cli import serve

if __name__ == "__main__":
    serve()
