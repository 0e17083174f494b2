"""Data: the dataset registry, the TFRecord layout, preprocessing and the input pipelines."""
