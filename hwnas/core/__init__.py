"""What every stage shares and nothing about transformers: errors, atomic file writes and locks,
run folders and manifests, progress bars, W&B tracking, fresh-process isolation, and the parts of
the config schema every section uses.

A leaf: nothing here imports another hwnas package (tests/test_layering.py keeps it so).
"""
