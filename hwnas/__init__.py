"""hwnas: hardware-aware neural architecture search for transformers.

The pipeline from Python (`hwnas.api`; each stage the one `hwnas <stage> CONFIG` runs):

    import hwnas

    cfg = hwnas.load_config("experiments/quickstart.yaml", {"train.steps": 600})
    hwnas.run(cfg)                                   # train -> latency -> predictors -> search -> export
    print(hwnas.front(cfg)["front"][0]["key"])       # the saved Pareto front
    model = hwnas.from_pretrained(cfg.run_path / "export")
    print(model.generate("def ", max_new_tokens=80, seed=0))

or stage by stage: `hwnas.train(cfg)`, `hwnas.build_latency_tables(cfg)`, `hwnas.fit_predictors(cfg)`,
`hwnas.pareto_search(cfg)`, `hwnas.export_model(cfg, pick="min loss", force=True)`, each returning its
typed `StageResult`. Every name here is imported on first use, so `import hwnas` stays cheap (no torch).

The component packages are `hwnas.search_space`, `hwnas.supernet`, `hwnas.predictors`,
`hwnas.latency`, `hwnas.kernels`, `hwnas.search` and `hwnas.export`; this package holds the API,
the CLI, the experiment-config schema and the pipeline that chains the stages.
"""

__version__ = "0.1.0"

# name -> the module it is imported from on first use
_LAZY = {
    **dict.fromkeys(("load_config", "train", "build_latency_tables", "fit_predictors", "pareto_search", "export_model",
                     "run", "front"), "hwnas.api"),
    "Pipeline": "hwnas.pipeline",
    "ExperimentConfig": "hwnas.config",
    "ExportedModel": "hwnas.export",
    "from_pretrained": "hwnas.export",
    "HwnasError": "hwnas.core.errors",
    "ConfigError": "hwnas.core.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hwnas' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # the next use is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
