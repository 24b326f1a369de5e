"""On-demand benchmarks for robvae (``python -m benchmarks``); never part of the test suite."""
