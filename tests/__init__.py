"""The test suite, a package so that test modules import their helpers as ``tests._helper``.

pytest (rootdir-relative ``prepend`` import mode) puts the repository root on ``sys.path`` for a
package of tests, so ``from tests._fresh_process import run_python`` works under ``pytest``,
``python -m pytest`` and pytest-xdist alike; no test adds paths itself.
"""
