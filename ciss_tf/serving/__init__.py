"""Serving: the SavedModel for TF Serving and the exact fast inference rewrites."""
