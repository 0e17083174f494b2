"""Plain helpers shared by the tests (no fixtures: those are in `tests/conftest.py`).

`cli`: the repository root, the environment of a command, `run_cli` and `cli_error_line`;
`nets`: `varied_tiny_net`; `training_runs`: tiny training runs in process and what they leave;
`raw_datasets`: tiny raw datasets in their released layouts, shards read back;
`pspnet_reference`: PSPNet as the official weights hold it, for the importer's tests.
"""
