"""jaxcsp benchmarks: each script prints our time, a peer's time and their ratio from one run."""
