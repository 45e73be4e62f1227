"""The `export:` section of the experiment config: which front member to ship, and how to check it.

Everything here has a default, so `hwnas export RUN_DIR` needs no YAML: the search space and the
training settings come from the run's supernet checkpoint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hwnas.core.config import (
    MAX_BATCH,
    MAX_INT4_BLOCK,
    MAX_PICK,
    MAX_SECONDS,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TOKENS,
    Section,
    Seed,
    power_of_two,
)

MAX_SAMPLE_TOKENS = 10**5  # bytes generated one forward pass at a time for report.md


class ExportConfig(Section):
    """Defaults of `hwnas export` (the command line overrides pick, out dir and fine-tuning steps).

    `pick`: a front index, an arch key, or a rule 'min|max <objective> [where <constraint> [and ...]]'.
    `full_precision_layers`: what `model.int8.onnx` does with layers the arch keeps at 16 bits
    (layers at 8 or 4 bits always follow the arch: int8, or int4 `MatMulNBits`).
    Latency is re-measured with the protocol and workload of the run's latency tables when they
    exist (else the `latency:` section's defaults); `latency_max_seconds` caps each measurement.
    """

    pick: str = Field(default="min loss", min_length=1, max_length=MAX_PICK,
                      description="which front member to export: a front index, an arch key, or a rule 'min|max "
                      "<objective> [where <constraint> [and ...]]' (`hwnas export --pick` overrides)")
    out_dir: str | None = Field(default=None, description="folder the export is written to; default: "
                                "<run_dir>/export (`--out` overrides)")
    # fine-tuning of the exported subnet (0: none)
    finetune_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description=f"optimizer steps, 0..{MAX_STEPS}, of "
                                "training the extracted subnet alone on the run's corpus before export; 0: the "
                                "supernet's weights as they are (`--finetune-steps` overrides)")
    finetune_lr: float = Field(default=3e-4, gt=0, description="peak lr (warmup over a tenth of the steps, then cosine)")
    finetune_batch_size: int | None = Field(default=None, gt=0, le=MAX_BATCH, description="sequences per fine-tuning "
                                            "step; default: the run's train.batch_size")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the subnet is extracted and "
                                                   "fine-tuned (auto: CUDA when present); ONNX runs on CPU")
    # checks
    eval_tokens: int = Field(default=65536, gt=0, le=MAX_TOKENS, description="validation tokens for every loss and the parity check")
    eval_batch_size: int = Field(default=16, gt=0, le=MAX_BATCH, description="sequences per batch of those "
                                 "validation losses")
    parity_atol: float = Field(default=1e-4, gt=0, description="max |ONNX Runtime fp32 - torch| of the logits; a "
                               "larger difference fails the export and writes nothing")
    # quantized model
    full_precision_layers: Literal["int8", "fp32"] = Field(
        default="int8", description="what model.int8.onnx does with layers the arch keeps at 16 bits: quantize "
        "them to int8 too, or keep them fp32 (8- and 4-bit layers always follow the arch)")
    int4_block_size: int = Field(default=32, ge=16, le=MAX_INT4_BLOCK, description="weights per block of the int4 "
                                 "MatMulNBits layers in model.int8.onnx (a power of two)")
    # latency on this machine
    measure_latency: bool = Field(default=True, description="re-measure the exported model's latency on this machine "
                                  "(torch and ONNX Runtime, CPU) against the run's latency tables")
    latency_max_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS, description="cap, in seconds, on "
                                              "each latency measurement's timing (default: the table's protocol)")
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS, description="CPU threads of ONNX Runtime and the "
                                "latency measurements (default: the latency table's, else all usable)")
    # the sample in report.md
    sample_prompt: str = Field(default="def ", description="prompt of the text sample in report.md")
    sample_tokens: int = Field(default=80, ge=0, le=MAX_SAMPLE_TOKENS, description="tokens (bytes) generated for "
                               "the sample in report.md; 0: no sample")
    seed: Seed = Field(default=0, description="seed of the fine-tuning batches, the sample and the latency inputs")
    decode: bool = Field(default=True, description="also write the decoding step as ONNX (model.decode.onnx and, with "
                         "low-bit layers, model.decode.int8.onnx: the cache in and out), check it against torch, and "
                         "(with measure_latency) time prefill and tokens/s on this machine")
    wandb: Literal["offline", "online", "disabled"] = Field(
        default="offline", description="W&B mode for the export's run: its figures, and the exported folder as a model artifact")
    wandb_project: str = Field(default="hwnas", description="W&B project of the export's run")

    @field_validator("int4_block_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        return power_of_two(v)

    @field_validator("pick")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("needs a front index, an arch key or a rule, got only spaces")
        return v
