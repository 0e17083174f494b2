"""Evaluation: scoring models on datasets."""
