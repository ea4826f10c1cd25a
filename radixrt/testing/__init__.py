"""Drivers for tests and micro-benchmarks: the scheduler and a ModelRunner in one process,
and hand-built ForwardBatches. Nothing in the server imports this package."""
