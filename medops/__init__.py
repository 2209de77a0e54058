"""medops."""
