"""Lambda handler sources shipped by the aws components (read as files, not imported)."""
