"""The test suite, a package so that its helpers import as `tests.helpers` in every import mode."""

import pytest

# The helpers' `assert`s report values as the tests' own do (registered before their import).
pytest.register_assert_rewrite("tests.helpers")
