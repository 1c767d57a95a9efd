"""llmos_operator."""
