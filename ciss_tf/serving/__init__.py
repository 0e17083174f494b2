"""Serving: the SavedModel for TF Serving."""
