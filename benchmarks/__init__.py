"""Benchmarks: `python -m benchmarks.NAME [--quick]` prints a readable table and, as its
last line, one JSON object of its figures (`json.dumps`; ratios measured in the same run)."""
