"""The example shop's own tests: its workflows checked with ``hookflow_gen.testing``."""
