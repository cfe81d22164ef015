"""The project's test fixtures (tests/conftest.py) for the benchmarks' tests too."""

from tests.conftest import text_file  # noqa: F401  (a fixture: pytest finds it by name here)
