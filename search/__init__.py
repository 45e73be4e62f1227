"""hwnas.search (see ../shared/DESIGN.md)."""
