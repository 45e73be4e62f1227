"""hwnas.predictors (see ../shared/DESIGN.md)."""
