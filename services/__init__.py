"""medops services: each one imports the ``medops`` library and never another service."""
