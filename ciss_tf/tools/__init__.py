"""Tools built on the library: the embedded demo and the benchmark."""
