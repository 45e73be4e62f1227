"""hwnas: hardware-aware neural architecture search for transformers.

The component packages are `hwnas.search_space`, `hwnas.supernet`, `hwnas.predictors`,
`hwnas.latency`, `hwnas.kernels`, `hwnas.search` and `hwnas.export`; this package holds the CLI,
the experiment-config schema and the pipeline that chains the stages.
"""

__version__ = "0.1.0"
