"""hwnas.latency (see ../shared/DESIGN.md)."""
