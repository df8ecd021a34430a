"""Developer tooling beside the `helpers` runtime package, never shipped with it.

runner (make run / make test-gpu), tiny/ (offline random-weight models), release (make release),
strip (make strip). Tests, benchmarks and CI import these; notebooks never do.
"""
