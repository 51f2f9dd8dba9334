"""The test suite. A package, so that pytest puts the checkout's root on sys.path (its default
"prepend" import mode inserts the first folder above the outermost __init__.py) and the tests import
their helpers as tests.support."""
