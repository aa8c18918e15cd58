"""``make run``'s launcher and the private Redis it starts: development only, never shipped.

Nothing in ``core/``, ``api/`` or ``worker/`` imports this package; the tests and benchmarks use
its Redis starter and free-port finder to run real services on loopback.
"""
