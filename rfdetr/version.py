"""The package version, in a module of its own so that any layer may read it (``rfdetr.__version__`` re-exports it).

Kept equal to ``version`` in pyproject.toml (tests/util/test_moved.py checks it).
"""

__version__ = "0.1.0"
