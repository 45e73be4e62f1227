"""hwnas.kernels (see ../shared/DESIGN.md)."""
