"""hwnas.export (see ../shared/DESIGN.md)."""
