"""The latency backends by name, without loading them: what the config, the objective names and
the CLI check a runtime against, readable without torch or ONNX Runtime (`backends` registers a
class under each name and refuses to load if the two lists part)."""

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime")
DEPLOYED = "onnxruntime"  # the runtime the export deploys: a latency objective's runtime when it names none
