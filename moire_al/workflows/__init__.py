"""moire_al.workflows."""
