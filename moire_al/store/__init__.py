"""moire_al.store."""
