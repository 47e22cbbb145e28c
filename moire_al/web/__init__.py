"""moire_al.web."""
