"""hwnas.supernet (see ../shared/DESIGN.md)."""
