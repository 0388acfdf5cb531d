"""Memory benchmarks run by hand (not collected by pytest: no test_ prefix); tests/test_benchmarks.py runs each
at a toy size."""
