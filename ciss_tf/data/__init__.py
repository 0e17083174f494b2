"""Data: dataset registry, raw readers, shard writer, record layout, preprocessing, pipelines."""
