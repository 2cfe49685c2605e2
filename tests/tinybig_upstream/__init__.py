"""tinybig's fusion unit tests (a package, so their module names cannot clash with ours)."""
