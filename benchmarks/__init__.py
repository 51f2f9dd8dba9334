"""The benchmarks, run from the checkout's root as modules (`.venv/bin/python -m benchmarks.run`), so
that they import the helpers they share with the tests from tests.support."""
