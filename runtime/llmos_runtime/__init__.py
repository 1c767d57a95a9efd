"""llmos_runtime."""
