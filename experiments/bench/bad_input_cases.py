"""The cases of `bad_inputs.py`: how each one damages a copy of a finished tiny run (or its config),
which command it then runs, and which outcomes are acceptable for it.

A case gets a `Ctx`: its own folder holding `run/` (a copy of the finished run, unless the case is
`fresh`), the experiment config it writes to `tiny.yaml`, and a marker path that code smuggled
into a file would create. Setups damage files; `check_*` functions decide, for a command that
exited 0 where recovery is acceptable, whether the result is right (None) or not (a reason).
Drivers (kill cases) run several commands and report what they saw.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TOKEN_VAR = "HWNAS_BAD_INPUT_CASE"  # every process of a case carries it: how leftovers are found
STAGES = ("train", "latency", "predictors", "search", "export")
# the hwnas CLI under an address-space limit, so a huge allocation fails instead of taking the machine
LAUNCH = ("import resource, runpy, sys; n = int(sys.argv.pop(1)); resource.setrlimit(resource.RLIMIT_AS, (n, n)); "
          "sys.argv[0] = 'hwnas'; runpy.run_module('hwnas.cli', run_name='__main__', alter_sys=True)")


# --- processes ----------------------------------------------------------------------------------
@dataclass
class Result:
    """What one command did."""

    args: list[str]
    rc: int | None  # None: killed at its timeout
    out: str
    err: str
    seconds: float
    timed_out: bool = False


def procs_with(token: str) -> list[int]:
    """Live processes whose environment holds this case's token (or one it prefixes)."""
    want = f"{TOKEN_VAR}={token}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if any(entry.startswith(want) for entry in env.split(b"\0")):
            found.append(int(d))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def leftovers(token: str, grace: float = 5.0) -> list[int]:
    """Processes of `token` still alive `grace` seconds after their command ended."""
    end = time.monotonic() + grace
    while (pids := procs_with(token)) and time.monotonic() < end:
        time.sleep(0.25)
    return pids


class Proc:
    """`hwnas ARGS` started in the case folder, in its own session, output collected by threads."""

    def __init__(self, ctx: Ctx, args: list[str], token: str | None = None):
        self.args, self.token = args, token or ctx.token
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "160", TOKEN_VAR: self.token}
        limit = str(int(ctx.mem_gb * 2**30))
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen([sys.executable, "-c", LAUNCH, limit, *args], cwd=ctx.dir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                        for s, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream, buf: list[str]) -> None:
        for line in iter(stream.readline, b""):
            buf.append(line.decode("utf-8", "replace"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.out) + list(self.err))

    def kill_all(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_pids(procs_with(self.token))

    def wait(self, timeout: float) -> Result:
        timed_out = False
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill_all()
            self.p.wait()
        for t in self.threads:
            t.join(5)
        return Result(self.args, None if timed_out else self.p.returncode, "".join(self.out), "".join(self.err),
                      time.perf_counter() - self.t0, timed_out)


# --- the case's world ---------------------------------------------------------------------------------
@dataclass
class Ctx:
    dir: Path  # the case's folder, cwd of its commands
    master: Path  # the finished master run (never written)
    text: Path  # the corpus source folder
    cfg: dict[str, Any]  # written to dir/tiny.yaml after the setup, unless config_text is set
    token: str
    mem_gb: float
    config_text: str | None = None
    config_bytes: bytes | None = None  # a config file that is not UTF-8 text
    damaged: dict[str, str] = field(default_factory=dict)  # rel path -> sha256 of the damaged file
    notes: list[str] = field(default_factory=list)  # what a driver saw
    flags: list[tuple[str, str]] = field(default_factory=list)  # (outcome, why) found by a driver

    @property
    def run(self) -> Path:
        return self.dir / "run"

    @property
    def config(self) -> Path:
        return self.dir / "tiny.yaml"

    @property
    def marker(self) -> Path:
        return self.dir / "MARKER"

    @property
    def file(self) -> Path:
        return self.dir / "afile.txt"

    def fmt(self, args: list[str]) -> list[str]:
        keys = {"config": self.config, "run": self.run, "dir": self.dir, "file": self.file, "marker": self.marker}
        return [a.format(**keys) for a in args]

    def write_config(self) -> None:
        if self.config_bytes is not None:
            self.config.write_bytes(self.config_bytes)
        else:
            self.config.write_text(self.config_text if self.config_text is not None else yaml.safe_dump(self.cfg))


@dataclass
class Case:
    cls: str  # security | integrity | processes | values | mistakes
    name: str
    cmd: list[str] | None  # hwnas arguments ({config} {run} {dir} {file} {marker} filled in); None with a driver
    setup: Callable[[Ctx], None] | None = None
    ok: tuple[str, ...] = ("clear",)  # acceptable outcomes
    check: Callable[[Ctx], str | None] | None = None  # exit 0 where "recovered" is acceptable: None if the result is right
    fresh: bool = False  # no copy of the master run (config-only cases, or a run started from scratch)
    foreign: bool = False  # another experiment's command: changing any existing file is data loss, even on success
    timeout: float = 120
    driver: Callable[[Ctx, Case], Result] | None = None
    why: str = ""  # what a non-acceptable outcome means, for the report

    @property
    def id(self) -> str:
        return f"{self.cls}/{self.name}"


# --- commands -------------------------------------------------------------------------------------------
COMMANDS = {
    "space": ["space", "{config}", "-n", "1"],
    "train": ["train", "{config}", "--no-progress"],
    "latency": ["latency", "{config}", "--no-progress"],
    "predictors": ["predictors", "{config}", "--no-progress"],
    "search": ["search", "{config}", "--no-progress"],
    "pareto": ["pareto", "{run}"],
    "export": ["export", "{run}", "--config", "{config}", "--out", "{dir}/exp", "--no-progress"],
    "run": ["run", "{config}", "--no-progress"],
}


def steps_16(ctx: Ctx) -> None:
    """Resume training for 4 more steps (the master trained 12)."""
    ctx.cfg["train"]["steps"] = 16


def rerun_search(ctx: Ctx) -> None:
    """A changed search section: `hwnas run` re-runs search and export."""
    ctx.cfg["search"]["budget"] = 180


def reader(name: str) -> tuple[list[str], Callable[[Ctx], None] | None]:
    """(command, extra setup) of a reader: a command name, or `resume` (train 4 more steps)."""
    if name == "resume":
        return COMMANDS["train"], steps_16
    return COMMANDS[name], None


# --- bytes and hashes -------------------------------------------------------------------------------------
def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mark_damaged(ctx: Ctx, rel: str) -> None:
    p = ctx.run / rel
    if p.is_file():
        ctx.damaged[rel] = sha(p)


def reseal(ctx: Ctx, before: bytes, rel: str) -> None:
    """A forger's step: put the new sha256 of `rel` wherever a text file of the run names its old one."""
    old, new = hashlib.sha256(before).hexdigest(), sha(ctx.run / rel)
    for p in ctx.run.rglob("*"):
        if p.is_file() and p.stat().st_size < 2**21 and p.suffix in (".json", ".jsonl", ".txt", ".sha256", ""):
            try:
                text = p.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            if old in text:
                p.write_text(text.replace(old, new))


def damage(fn: Callable[[bytes], bytes]) -> Callable[[str], Callable[[Ctx], None]]:
    """A byte-level damage as a setup factory: damage(fn)(rel) rewrites run/rel as fn(bytes)."""
    def for_file(rel: str) -> Callable[[Ctx], None]:
        def setup(ctx: Ctx) -> None:
            p = ctx.run / rel
            p.write_bytes(fn(p.read_bytes()))
            mark_damaged(ctx, rel)
        return setup
    return for_file


def _flip(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0x80]) + b[i + 1:]


def _same_size(b: bytes) -> bytes:
    """Overwrite 256 bytes in the middle with other text of the same length."""
    i = len(b) // 2
    n = min(256, len(b) - i)
    return b[:i] + bytes((c + 1) % 128 if 32 <= c < 127 else c for c in b[i:i + n]) + b[i + n:]


def _torn(b: bytes) -> bytes:
    """Cut the last line of a JSONL file in the middle (no trailing newline)."""
    body = b.rstrip(b"\n")
    start = body.rfind(b"\n") + 1
    return body[: start + (len(body) - start) // 2]


truncate = damage(lambda b: b[: len(b) // 2])
empty = damage(lambda b: b"")
flip = damage(_flip)
same_size = damage(_same_size)
torn = damage(_torn)
not_json = damage(lambda b: b"this is not JSON {\n")
json_list = damage(lambda b: b"[1, 2, 3]\n")
json_empty_obj = damage(lambda b: b"{}\n")
garbage_line = damage(lambda b: b + b"\x00\xff garbage \x01\n")


def delete(rel: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return setup


def make_dir(rel: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        p.mkdir()
        (p / "inside.txt").write_text("a folder where a file was\n")
    return setup


def edit_json(rel: str, fn: Callable[[Any], Any], indent: int | None = 2) -> Callable[[Ctx], None]:
    """Rewrite run/rel as fn(parsed JSON) (fn may mutate and return None)."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        obj = json.loads(p.read_text())
        new = fn(obj)
        p.write_text(json.dumps(obj if new is None else new, indent=indent, sort_keys=True) + "\n")
        mark_damaged(ctx, rel)
    return setup


def edit_jsonl(rel: str, fn: Callable[[list[Any]], list[Any] | None]) -> Callable[[Ctx], None]:
    """Rewrite a JSONL file as fn(list of parsed lines); items that are str are written raw."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        new = fn(rows)
        rows = rows if new is None else new
        p.write_text("".join((r if isinstance(r, str) else json.dumps(r, sort_keys=True)) + "\n" for r in rows))
        mark_damaged(ctx, rel)
    return setup


def edit_number(rel: str, key: str, occurrence: int = 0) -> Callable[[Ctx], None]:
    """Same-size edit: change the first fractional digit of the `occurrence`-th number after `"key": `."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        text = p.read_text()
        hits = list(re.finditer(rf'"{re.escape(key)}": ?\[?\s*-?\d+\.(\d)', text))
        m = hits[occurrence]
        i = m.start(1)
        p.write_text(text[:i] + str((int(text[i]) + 5) % 10) + text[i + 1:])
        mark_damaged(ctx, rel)
    return setup


def both(*setups: Callable[[Ctx], None] | None) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for s in setups:
            if s:
                s(ctx)
    return setup


# --- safetensors --------------------------------------------------------------------------------------------
def sft_read(path: Path) -> tuple[dict[str, Any], bytearray]:
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), bytearray(b[8 + n:])


def sft_write(path: Path, header: dict[str, Any], data: bytes) -> None:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + bytes(data))


def embedding(header: dict[str, Any]) -> str:
    """The token embedding's tensor name: used by every subnet."""
    return next(k for k in header if k != "__metadata__" and k.removeprefix("model/") == "tok_emb")


def sft_tensor(rel: str, fn: Callable[[Any], None], name: Callable[[dict], str] = embedding) -> Callable[[Ctx], None]:
    """Edit one F32 tensor's values in place (same size): fn(numpy view)."""
    import numpy as np

    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        header, data = sft_read(p)
        t = header[name(header)]
        a, b = t["data_offsets"]
        view = np.frombuffer(data, dtype=np.float32, count=(b - a) // 4, offset=a)
        arr = view.copy()
        fn(arr)
        data[a:b] = arr.tobytes()
        sft_write(p, header, data)
        mark_damaged(ctx, rel)
    return setup


def sft_header(rel: str, fn: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], None]:
    """Edit the header (tensor entries or `__metadata__`), keeping the data."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        header, data = sft_read(p)
        fn(header)
        sft_write(p, header, data)
        mark_damaged(ctx, rel)
    return setup


def set_nan(a) -> None:
    a[:8] = float("nan")


def set_inf(a) -> None:
    a[:8] = float("inf")


def scale(a) -> None:
    a *= 2.0


def meta_json(key: str, fn: Callable[[Any], Any]) -> Callable[[dict], None]:
    """Header edit: metadata[key] (a JSON string) replaced by json.dumps(fn(parsed))."""
    def edit(h: dict) -> None:
        h["__metadata__"][key] = json.dumps(fn(json.loads(h["__metadata__"][key])))
    return edit


def meta_set(key: str, value: str | None) -> Callable[[dict], None]:
    def edit(h: dict) -> None:
        if value is None:
            h["__metadata__"].pop(key, None)
        else:
            h["__metadata__"][key] = value
    return edit


def drop_tensor(h: dict) -> None:
    h.pop(embedding(h))


def reshape_tensor(h: dict) -> None:
    """Same number of elements, another shape."""
    rows, cols = h[embedding(h)]["shape"]
    h[embedding(h)]["shape"] = [rows // 2, cols * 2]


def to_f16(h: dict) -> None:
    h[embedding(h)]["dtype"] = "F16"


def header_size_huge(ctx: Ctx, rel: str = "train/checkpoint.safetensors") -> None:
    p = ctx.run / rel
    b = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**60) + b[8:])
    mark_damaged(ctx, rel)


def header_garbage(rel: str) -> Callable[[Ctx], None]:
    """Same size: bytes inside the JSON header replaced by '#'."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        b = bytearray(p.read_bytes())
        b[20:60] = b"#" * 40
        p.write_bytes(bytes(b))
        mark_damaged(ctx, rel)
    return setup


def deep_arch(depth: int) -> Callable[[Any], Any]:
    def fn(arch: dict) -> dict:
        arch["layers"] = arch["layers"][:1] * depth
        return arch
    return fn


# --- code that must never run ---------------------------------------------------------------------------------
class _Evil:
    """Pickles as a call of os.system that creates the case's marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickle_at(rel: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.run / rel).write_bytes(pickle.dumps({"state": _Evil(ctx.marker)}))
        mark_damaged(ctx, rel)
    return setup


def _skops_load(path: Path):
    import skops.io as sio

    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


def _skops_dump(obj: Any, path: Path) -> None:
    import skops.io as sio

    sio.dump(obj, path, compression=zipfile.ZIP_DEFLATED)


def skops_model(make: Callable[[Ctx, Any], Any], sealed: bool = False) -> Callable[[Ctx], None]:
    """Replace the saved predictor's fitted model by make(ctx, old model); `sealed`: the forger
    also updates every sha256 of the file recorded in the run."""
    rel = "predictors/predictor.skops"

    def setup(ctx: Ctx) -> None:
        p = ctx.run / rel
        before = p.read_bytes()
        predictor = _skops_load(p)
        predictor.model_ = make(ctx, predictor.model_)
        _skops_dump(predictor, p)
        if sealed:
            reseal(ctx, before, rel)
        mark_damaged(ctx, rel)
    return setup


def _fitted(*transformers):
    import numpy as np

    for t in transformers:
        t.fit(np.zeros((1, 3)))
    return transformers


def runstring_model(ctx: Ctx, model: Any) -> Any:
    """A pipeline whose steps fill the features with Python source, take one element and exec it
    (numpy.testing's runstring) before the real model: only functions of trusted modules."""
    import numpy as np
    from numpy.testing._private.utils import runstring
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    code = f"open({str(ctx.marker)!r}, 'w').write('code ran')"
    steps = _fitted(FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": f"U{len(code)}"}),
                    FunctionTransformer(np.take, kw_args={"indices": 0}),
                    FunctionTransformer(runstring, kw_args={"dict": {}}))
    return Pipeline([("fill", steps[0]), ("take", steps[1]), ("run", steps[2]), ("model", model)])


def function_model(func: Callable) -> Callable[[Ctx, Any], Any]:
    """The real model behind a FunctionTransformer calling `func`."""
    def make(ctx: Ctx, model: Any) -> Any:
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        return Pipeline([("f", _fitted(FunctionTransformer(func))[0]), ("model", model)])
    return make


def dummy_model(ctx: Ctx, model: Any) -> Any:
    """Another fitted regressor (every arch predicted alike): no code, a different predictor."""
    import numpy as np
    from sklearn.dummy import DummyRegressor

    return DummyRegressor().fit(np.zeros((2, 3)), [1.0, 1.0])


def skops_zip_member(ctx: Ctx) -> None:
    """A zip-slip entry ('../../MARKER') added to predictor.skops."""
    rel = "predictors/predictor.skops"
    with zipfile.ZipFile(ctx.run / rel, "a") as z:
        z.writestr("../../MARKER", "extracted outside the run\n")
    mark_damaged(ctx, rel)


def skops_schema_not_json(ctx: Ctx) -> None:
    rel = "predictors/predictor.skops"
    p = ctx.run / rel
    with zipfile.ZipFile(p) as z:
        items = {n: z.read(n) for n in z.namelist()}
    items["schema.json"] = b"{ not json"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in items.items():
            z.writestr(n, b)
    mark_damaged(ctx, rel)


def skops_array(ctx: Ctx) -> None:
    import numpy as np

    _skops_dump(np.arange(5.0), ctx.run / "predictors" / "predictor.skops")
    mark_damaged(ctx, "predictors/predictor.skops")


def yaml_text(text: str) -> Callable[[Ctx], None]:
    """The config file's text, with {marker} filled in."""
    def setup(ctx: Ctx) -> None:
        ctx.config_text = text.format(marker=ctx.marker)
    return setup


def yaml_alias_bomb(ctx: Ctx) -> None:
    """Billion laughs: `seed` is nine nested levels of ten aliases each (10**9 strings once expanded)."""
    levels = ["&a0 [" + ", ".join(["x"] * 10) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    cfg = {k: v for k, v in ctx.cfg.items() if k != "seed"}
    ctx.config_text = yaml.safe_dump(cfg) + "seed: [" + ", ".join(levels) + "]\n"


# --- latency tables -----------------------------------------------------------------------------------------
LATENCY = "latency/cpu-torch.json"


def table_edit(fn: Callable[[dict], None], sealed: bool = True) -> Callable[[Ctx], None]:
    """Edit the latency table's payload; `sealed`: recompute its content hash (a forger's table)."""
    def setup(ctx: Ctx) -> None:
        p = ctx.run / LATENCY
        before = p.read_bytes()
        doc = json.loads(before)
        fn(doc["payload"])
        if sealed:
            canon = json.dumps(doc["payload"], sort_keys=True, separators=(",", ":"), allow_nan=True)
            doc["sha256"] = hashlib.sha256(canon.encode()).hexdigest()
        p.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        if sealed:
            reseal(ctx, before, LATENCY)
        mark_damaged(ctx, LATENCY)
    return setup


def _first_entry(payload: dict) -> dict:
    return next(iter(payload["entries"].values()))


def entry_value(value: float) -> Callable[[dict], None]:
    def fn(payload: dict) -> None:
        for k in ("min_s", "median_s", "p10_s", "p90_s"):
            _first_entry(payload)[k] = value
    return fn


def drop_entry(payload: dict) -> None:
    payload["entries"].pop(next(iter(payload["entries"])))


def other_dims(payload: dict) -> None:
    payload["dims"] = {**payload["dims"], "vocab_size": 512}


# --- results that count as recovered -------------------------------------------------------------------------
def rebuilt(*rels: str) -> Callable[[Ctx], str | None]:
    """The damaged files were replaced by readable ones (or by the master's content)."""
    def check(ctx: Ctx) -> str | None:
        for rel in rels:
            p = ctx.run / rel
            if not p.is_file():
                return f"{rel} is missing after the command"
            if ctx.damaged.get(rel) == sha(p):
                return f"{rel} still holds the damage"
            if p.suffix == ".json":
                try:
                    json.loads(p.read_text())
                except ValueError:
                    return f"{rel} is still not JSON"
            if p.suffix == ".jsonl":
                try:
                    [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
                except ValueError:
                    return f"{rel} still has a line that is not JSON"
            if (p.parent / "manifest.json").is_file():  # hwnas lists what it writes: the new file must be listed as it is
                from hwnas.core.manifest import Manifest

                why = Manifest(p.parent, "(the stage)").check(p.name)
                if why:
                    return f"{rel} is not listed as it is in its manifest: {why}"
        return None
    return check


def complete_run(ctx: Ctx) -> str | None:
    try:
        state = json.loads((ctx.run / "pipeline.json").read_text())
    except (OSError, ValueError) as e:
        return f"pipeline.json unreadable after the run ({e})"
    missing = [s for s in STAGES if s not in (state.get("stages") or {})]
    if missing:
        return f"pipeline.json lacks stages {missing}"
    return None


def run_rebuilt(*rels: str) -> Callable[[Ctx], str | None]:
    """`hwnas run` finished every stage and replaced the damaged files."""
    def check(ctx: Ctx) -> str | None:
        return complete_run(ctx) or rebuilt(*rels)(ctx)
    return check


def same_predictor(ctx: Ctx) -> str | None:
    """The predictor stage's result equals the master's (its records re-measured where lost)."""
    try:
        now = json.loads((ctx.run / "predictors" / "report.json").read_text())
    except (OSError, ValueError) as e:
        return f"predictors/report.json unreadable ({e})"
    want = json.loads((ctx.master / "predictors" / "report.json").read_text())
    if now.get("model") != want.get("model"):
        return f"chose {now.get('model')}, the intact run chose {want.get('model')}"
    for k, v in (want.get("heldout") or {}).items():
        got = (now.get("heldout") or {}).get(k)
        if not isinstance(got, (int, float)) or not math.isclose(got, v, rel_tol=1e-6, abs_tol=1e-9):
            return f"held-out {k} {got} != {v} of the intact run"
    return None


def predictor_done(ctx: Ctx) -> str | None:
    """Every planned subnet has one readable record and the stage wrote its report."""
    try:
        plan = json.loads((ctx.run / "predictors" / "plan.json").read_text())
        json.loads((ctx.run / "predictors" / "report.json").read_text())
        keys = [json.loads(line)["key"] for line in (ctx.run / "predictors" / "records.jsonl").read_text().splitlines()
                if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"the predictor stage's files are unreadable ({e})"
    missing = set(plan["fit"] + plan["heldout"]) - set(keys)
    return f"{len(missing)} planned subnets without a record" if missing else None


def trained_to(steps: int) -> Callable[[Ctx], str | None]:
    def check(ctx: Ctx) -> str | None:
        try:
            summary = json.loads((ctx.run / "train" / "summary.json").read_text())
        except (OSError, ValueError) as e:
            return f"train/summary.json unreadable ({e})"
        if summary.get("steps") != steps:
            return f"trained {summary.get('steps')} steps, not {steps}"
        try:
            [json.loads(line) for line in (ctx.run / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
        except ValueError:
            return "train/metrics.jsonl still has a line that is not JSON"
        return None
    return check


def same_corpus(ctx: Ctx) -> str | None:
    for name in ("train.bin", "val.bin"):
        p = ctx.run / "corpus" / name
        if not p.is_file() or sha(p) != sha(ctx.master / "corpus" / name):
            return f"corpus/{name} differs from the corpus the checkpoint was trained on"
    return trained_to(16)(ctx)


def full_table(ctx: Ctx) -> str | None:
    try:
        now = json.loads((ctx.run / LATENCY).read_text())["payload"]["entries"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{LATENCY} unreadable ({e})"
    want = json.loads((ctx.master / LATENCY).read_text())["payload"]["entries"]
    return None if set(now) == set(want) else f"{len(now)} entries, the intact table has {len(want)}"


# --- kills ----------------------------------------------------------------------------------------------------
def complete_trials(db: Path) -> int:
    for _ in range(20):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                return c.execute(  # the optuna engine's trials (another engine's candidates are a study of their own)
                    "select count(*) from trials where state = 'COMPLETE' and study_id not in (select study_id from "
                    "study_user_attributes where key = 'engine' and value_json != '\"optuna\"')").fetchone()[0]
        except sqlite3.Error:
            time.sleep(0.2)
    return -1


def optuna_setup(ctx: Ctx) -> None:
    ctx.cfg["search"].update(engine="optuna", budget=120, validate_top=0)


def foreign_study(objectives: list[str], constraints: list[str]) -> Callable[[Ctx], None]:
    """An Optuna study in the run's study.db, made by a search of other objectives or constraints."""
    def setup(ctx: Ctx) -> None:
        import optuna

        optuna_setup(ctx)
        ctx.cfg["search"]["study_name"] = "hwnas"  # the search opens this very study (by default its name is its own)
        study = optuna.create_study(study_name="hwnas", storage=f"sqlite:///{ctx.run / 'search' / 'study.db'}",
                                    directions=["minimize"] * len(objectives))
        study.set_metric_names(objectives)
        study.set_user_attr("constraints", constraints)
        study.add_trial(optuna.trial.create_trial(values=[1.0] * len(objectives)))
    return setup


def kill_search(sig: int, group: bool = False) -> Callable[[Ctx, Case], Result]:
    """Start `hwnas search --workers 2` (Optuna), send `sig` once trials are being added (to the
    process, or to its whole group as a terminal's Ctrl-C does), look for workers left running,
    resume it while they run, and count the study's complete trials against its budget."""
    def driver(ctx: Ctx, case: Case) -> Result:
        args = ctx.fmt(["search", "{config}", "--workers", "2", "--no-progress"])
        db = ctx.run / "search" / "study.db"
        first = Proc(ctx, args)
        end = time.monotonic() + 150
        while time.monotonic() < end and first.p.poll() is None and (not db.exists() or complete_trials(db) < 10):
            time.sleep(0.5)
        if first.p.poll() is not None:
            ctx.notes.append("the search ended before it could be interrupted")
        else:
            ctx.notes.append(f"{signal.Signals(sig).name} after {complete_trials(db)} trials")
            os.killpg(first.p.pid, sig) if group else os.kill(first.p.pid, sig)
        killed = first.wait(60)
        if killed.rc == 0 and not ctx.notes[-1].startswith("the search ended"):
            ctx.flags.append(("accepted", f"exit 0 after {signal.Signals(sig).name}: the signal did not stop the search"))
        orphans = leftovers(ctx.token, 3.0)
        if orphans:
            ctx.flags.append(("orphans", f"{len(orphans)} processes still running after the interrupted search"))
        second = Proc(ctx, args, token=ctx.token + "-resume")
        res = second.wait(case.timeout)
        kill_pids(procs_with(ctx.token))
        n = complete_trials(db)
        budget = ctx.cfg["search"]["budget"]
        ctx.notes.append(f"{n} complete trials for budget {budget}")
        if n > budget:
            ctx.flags.append(("budget-exceeded", f"{n} complete trials for budget {budget}"))
        if "Traceback" in killed.err and sig != signal.SIGKILL:
            ctx.notes.append("the interrupted search printed a traceback")
        return res
    return driver


def kill_then_rerun(args: list[str], when: Callable[[Ctx, Proc], bool], rerun: list[str] | None = None,
                    limit: float = 120) -> Callable[[Ctx, Case], Result]:
    """SIGKILL `hwnas ARGS` once `when` holds, look for leftover processes, run it (or `rerun`) again."""
    def driver(ctx: Ctx, case: Case) -> Result:
        first = Proc(ctx, ctx.fmt(args))
        end = time.monotonic() + limit
        while time.monotonic() < end and first.p.poll() is None and not when(ctx, first):
            time.sleep(0.2)
        if first.p.poll() is not None:
            ctx.notes.append(f"ended (exit {first.p.returncode}) before the kill")
        else:
            ctx.notes.append(f"SIGKILL after {time.perf_counter() - first.t0:.1f} s")
            os.kill(first.p.pid, signal.SIGKILL)
        first.wait(30)
        orphans = leftovers(ctx.token, 3.0)
        if orphans:
            ctx.flags.append(("orphans", f"{len(orphans)} processes still running after the kill"))
        kill_pids(orphans)
        return Proc(ctx, ctx.fmt(rerun or args), token=ctx.token + "-again").wait(case.timeout)
    return driver


def after_line(text: str, delay: float) -> Callable[[Ctx, Proc], bool]:
    seen: dict[int, float] = {}

    def when(ctx: Ctx, proc: Proc) -> bool:
        if proc.saw(text):
            seen.setdefault(id(proc), time.monotonic())
            return time.monotonic() - seen[id(proc)] >= delay
        return False
    return when


def after_file(rel: str, delay: float = 0.0) -> Callable[[Ctx, Proc], bool]:
    seen: dict[int, float] = {}

    def when(ctx: Ctx, proc: Proc) -> bool:
        if (ctx.run / rel).exists():
            seen.setdefault(id(proc), time.monotonic())
            return time.monotonic() - seen[id(proc)] >= delay
        return False
    return when


def after_seconds(s: float) -> Callable[[Ctx, Proc], bool]:
    return lambda ctx, proc: time.perf_counter() - proc.t0 >= s


def _records_grew(n: int) -> Callable[[Ctx, Proc], bool]:
    def when(ctx: Ctx, proc: Proc) -> bool:
        p = ctx.run / "predictors" / "records.jsonl"
        return p.exists() and len(p.read_bytes().splitlines()) >= n
    return when


# --- the table of cases -----------------------------------------------------------------------------------------
DELETE = object()


def set_value(path: str, value: Any) -> Callable[[Ctx], None]:
    """Set (or with DELETE remove) the config value at a dotted path."""
    def setup(ctx: Ctx) -> None:
        *parents, last = path.split(".")
        node = ctx.cfg
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return setup


def foreign_space(ctx: Ctx) -> None:
    """Another experiment: a different search space (and name), pointed at this run dir."""
    ctx.cfg["name"] = "other"
    ctx.cfg["search_space"]["depth"] = [1, 2, 3]


def foreign_corpus(ctx: Ctx) -> None:
    """Another experiment's corpus: two other standard-library modules."""
    other = ctx.dir / "other-text"
    other.mkdir()
    import json as _json

    lib = Path(_json.__file__).parent.parent
    for name in ("string.py", "heapq.py"):
        (other / name).write_text((lib / name).read_text())
    ctx.cfg["name"] = "other"
    ctx.cfg["train"]["corpus"] = str(other)


def run_dir_at(rel: str, make: str | None = None) -> Callable[[Ctx], None]:
    """Point run_dir at dir/rel; make: 'file' (a regular file there) or 'dir' (an empty folder)."""
    def setup(ctx: Ctx) -> None:
        target = ctx.dir / rel
        if make == "file":
            target.write_text("not a run directory\n")
        elif make == "dir":
            target.mkdir(parents=True)
        ctx.cfg["run_dir"] = str(target)
    return setup


def export_symlink(ctx: Ctx) -> None:
    """The export folder is a symlink to a folder of the user's that is not an export."""
    victim = ctx.dir / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("the user's own files\n")
    shutil.rmtree(ctx.run / "export")
    (ctx.run / "export").symlink_to(victim)


def cases() -> list[Case]:
    out: list[Case] = []

    def add(cls: str, name: str, cmd: list[str] | None, setup=None, **kw) -> None:
        out.append(Case(cls, name, cmd, setup, **kw))

    def on(cls: str, name: str, rd: str, setup, **kw) -> None:
        """A damage read by a command (`rd`: a COMMANDS name or `resume`)."""
        cmd, extra = reader(rd)
        add(cls, f"{name} -> {rd}", cmd, both(setup, extra), **kw)

    # --- security ------------------------------------------------------------------------------------
    sec = "security"
    on(sec, "predictor.skops pipeline calling numpy.testing runstring", "search", skops_model(runstring_model),
       why="code from a tampered predictor file ran")
    on(sec, "predictor.skops runstring pipeline, hashes resealed", "search", skops_model(runstring_model, sealed=True),
       why="code from a tampered predictor file ran")
    on(sec, "predictor.skops runstring pipeline, search re-run", "run", both(skops_model(runstring_model), rerun_search),
       why="code from a tampered predictor file ran", ok=("clear", "recovered"),
       check=run_rebuilt("predictors/predictor.skops"))  # `hwnas run` fits the predictor again (no code ran: checked apart)
    on(sec, "predictor.skops FunctionTransformer(os.system)", "search", skops_model(function_model(os.system)))
    on(sec, "predictor.skops FunctionTransformer(builtins.eval)", "search", skops_model(function_model(eval)))
    on(sec, "predictor.skops FunctionTransformer(numpy.log1p), resealed", "search",
       skops_model(function_model(__import__("numpy").log1p), sealed=True), why="a function type was loaded from a predictor file")
    on(sec, "predictor.skops zip-slip member ../../MARKER", "search", skops_zip_member)
    on(sec, "pickle (os.system) as checkpoint.safetensors", "predictors", pickle_at("train/checkpoint.safetensors"))
    on(sec, "pickle (os.system) as checkpoint.safetensors", "export", pickle_at("train/checkpoint.safetensors"))
    on(sec, "pickle (os.system) as predictor.skops", "search", pickle_at("predictors/predictor.skops"))
    on(sec, "pickle (os.system) as export/model.safetensors", "run", pickle_at("export/model.safetensors"),
       ok=("clear", "recovered"), check=run_rebuilt("export/model.safetensors"))
    on(sec, "pickle (os.system) as front.json", "export", pickle_at("search/front.json"))
    add(sec, "YAML !!python/object/apply:os.system", COMMANDS["space"],
        yaml_text("name: tiny\nseed: !!python/object/apply:os.system ['touch {marker}']\n"), fresh=True)
    add(sec, "YAML !!python/name:os.system", COMMANDS["space"], yaml_text("name: !!python/name:os.system\n"), fresh=True)
    add(sec, "YAML alias bomb (billion laughs)", COMMANDS["space"], yaml_alias_bomb, fresh=True, timeout=60,
        why="a small config file made hwnas expand 10**9 items")
    add(sec, "export folder is a symlink to a user folder, --force",
        ["export", "{run}", "--config", "{config}", "--force", "--no-progress"], export_symlink)
    on(sec, "checkpoint metadata 'meta' holding a python/object YAML tag", "export",
       sft_header("train/checkpoint.safetensors", meta_set("meta", "!!python/object/apply:os.system ['touch MARKER']")))

    # --- data loss: another experiment's command on this run dir ------------------------------------------
    dl = "integrity"
    for cmd in ("train", "latency", "predictors", "search", "run"):
        add(dl, f"another experiment's config (other search space) -> {cmd}", COMMANDS[cmd], foreign_space, foreign=True,
            why="another experiment's command changed this run's files")
    add(dl, "another experiment's corpus -> train", COMMANDS["train"], both(foreign_corpus, steps_16), foreign=True,
        why="another experiment's command changed this run's files")

    # --- damaged artifacts, each read by the next stage -----------------------------------------------------
    ck = "train/checkpoint.safetensors"
    for rd in ("predictors", "export"):
        on(dl, "checkpoint truncated", rd, truncate(ck))
    on(dl, "checkpoint truncated", "run", truncate(ck), ok=("clear", "recovered"), check=run_rebuilt(ck))
    on(dl, "checkpoint truncated", "resume", truncate(ck), ok=("clear", "recovered"), check=trained_to(16))
    on(dl, "checkpoint empty", "predictors", empty(ck))
    on(dl, "checkpoint missing", "export", delete(ck))
    on(dl, "checkpoint missing", "search", delete(ck))
    on(dl, "checkpoint a folder", "predictors", make_dir(ck))
    on(dl, "checkpoint header bytes garbage (same size)", "predictors", header_garbage(ck))
    on(dl, "checkpoint header length 2**60", "predictors", lambda ctx: header_size_huge(ctx))
    on(dl, "checkpoint metadata 'meta' not JSON", "export", sft_header(ck, meta_set("meta", "{not json")))
    on(dl, "checkpoint metadata 'meta' not JSON", "resume", sft_header(ck, meta_set("meta", "{not json")))
    on(dl, "checkpoint metadata 'param_groups' not JSON", "resume", sft_header(ck, meta_set("param_groups", "{not json")))
    on(dl, "checkpoint metadata format changed", "predictors", sft_header(ck, meta_set("format", "other-format-9")))
    on(dl, "checkpoint metadata without 'meta'", "export", sft_header(ck, meta_set("meta", None)))
    on(dl, "checkpoint metadata space of another experiment", "export",
       sft_header(ck, meta_json("meta", lambda m: m | {"space": m["space"] | {"depth": [1, 2, 3]}})))
    on(dl, "checkpoint metadata train.steps edited", "predictors",
       sft_header(ck, meta_json("meta", lambda m: m | {"train": m["train"] | {"steps": 9999}})))
    for rd in ("predictors", "export"):
        on(dl, "checkpoint NaN in tok_emb", rd, sft_tensor(ck, set_nan))
    on(dl, "checkpoint inf in tok_emb", "search", sft_tensor(ck, set_inf))
    on(dl, "checkpoint NaN in tok_emb", "resume", sft_tensor(ck, set_nan))
    for rd in ("predictors", "export"):
        on(dl, "checkpoint tok_emb scaled x2 (finite, same size)", rd, sft_tensor(ck, scale))
    on(dl, "checkpoint tok_emb scaled x2 (finite, same size)", "run", sft_tensor(ck, scale), ok=("clear", "recovered"),
       check=run_rebuilt(ck))
    on(dl, "checkpoint byte flipped in tensor data", "predictors", flip(ck))
    on(dl, "checkpoint tensor tok_emb removed from header", "predictors", sft_header(ck, drop_tensor))
    on(dl, "checkpoint tensor tok_emb reshaped", "export", sft_header(ck, reshape_tensor))
    on(dl, "checkpoint tensor tok_emb dtype F16 (offsets unchanged)", "predictors", sft_header(ck, to_f16))
    on(dl, "checkpoint optimizer state NaN", "resume",
       sft_tensor(ck, set_nan, name=lambda h: next(k for k in h if k.startswith("optim/") and k.endswith("exp_avg"))))

    corpus = "corpus/train.bin"
    on(dl, "train.bin truncated", "predictors", truncate(corpus))
    on(dl, "train.bin truncated", "resume", truncate(corpus), ok=("clear", "recovered"), check=same_corpus)
    on(dl, "train.bin same-size edit", "predictors", same_size(corpus))
    on(dl, "train.bin same-size edit", "resume", same_size(corpus), ok=("clear", "recovered"), check=same_corpus)
    add(dl, "train.bin same-size edit -> export --finetune-steps 2", [*COMMANDS["export"], "--finetune-steps", "2"],
        same_size(corpus))
    on(dl, "train.bin missing", "predictors", delete(corpus))
    on(dl, "train.bin missing", "resume", delete(corpus), ok=("clear", "recovered"), check=same_corpus)
    val = "corpus/val.bin"
    on(dl, "val.bin truncated", "predictors", truncate(val))
    for rd in ("predictors", "search", "export"):
        on(dl, "val.bin same-size edit", rd, same_size(val))
    on(dl, "val.bin missing", "export", delete(val))
    meta = "corpus/corpus.json"
    on(dl, "corpus.json missing", "predictors", delete(meta))
    on(dl, "corpus.json not JSON", "predictors", not_json(meta))
    on(dl, "corpus.json not JSON", "resume", not_json(meta), ok=("clear", "recovered"), check=same_corpus)
    on(dl, "corpus.json truncated", "export", truncate(meta))
    on(dl, "corpus.json a JSON list", "predictors", json_list(meta))
    on(dl, "corpus.json without train_bytes", "export", edit_json(meta, lambda d: d.pop("train_bytes")))
    on(dl, "corpus.json val_bytes edited", "predictors", edit_json(meta, lambda d: d.update(val_bytes=d["val_bytes"] - 1)))
    on(dl, "corpus.json files_sha256 edited", "predictors", edit_json(meta, lambda d: d.update(files_sha256="0" * 64)))
    on(dl, "corpus folder is a file", "predictors", lambda ctx: (shutil.rmtree(ctx.run / "corpus"),
                                                               (ctx.run / "corpus").write_text("x\n")))

    lat = LATENCY
    on(dl, "latency table missing", "search", delete(lat))
    on(dl, "latency table truncated", "search", truncate(lat))
    on(dl, "latency table truncated", "latency", truncate(lat), ok=("clear", "recovered"), check=full_table,
       why="the damaged table is neither rebuilt by `hwnas latency` nor named for deletion")
    on(dl, "latency table truncated", "run", truncate(lat), ok=("clear", "recovered"), check=run_rebuilt(lat))
    on(dl, "latency table not JSON", "search", not_json(lat))
    on(dl, "latency table a JSON list", "search", json_list(lat))
    on(dl, "latency table byte flipped", "search", flip(lat))
    on(dl, "latency table entry edited (same size)", "search", edit_number(lat, "min_s"))
    on(dl, "latency table entry NaN, hash resealed", "search", table_edit(entry_value(float("nan"))))
    on(dl, "latency table entry negative, hash resealed", "search", table_edit(entry_value(-1.0)))
    on(dl, "latency table entry removed, hash resealed", "search", table_edit(drop_entry))
    on(dl, "latency table of another space (dims), hash resealed", "search", table_edit(other_dims))
    on(dl, "latency table format changed", "search", edit_json(lat, lambda d: d.update(format="other-9"), indent=1))
    on(dl, "latency table without sha256", "search", edit_json(lat, lambda d: d.pop("sha256"), indent=1))
    on(dl, "latency table a folder", "search", make_dir(lat))

    rec = "predictors/records.jsonl"
    on(dl, "records.jsonl torn last line", "predictors", torn(rec), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl garbage line appended", "predictors", garbage_line(rec), ok=("clear", "recovered"),
       check=same_predictor)
    on(dl, "records.jsonl empty", "predictors", empty(rec), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl loss edited (same size)", "predictors", edit_number(rec, "loss", 3),
       ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl loss edited (same size)", "run", both(edit_number(rec, "loss", 3), rerun_search),
       ok=("clear", "recovered"), check=run_rebuilt(rec))
    on(dl, "records.jsonl loss NaN", "predictors",
       edit_jsonl(rec, lambda rows: [r | {"metrics": r["metrics"] | {"loss": float("nan")}} if i == 2 else r
                                     for i, r in enumerate(rows)]), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl loss a string", "predictors",
       edit_jsonl(rec, lambda rows: [r | {"metrics": r["metrics"] | {"loss": "low"}} if i == 2 else r
                                     for i, r in enumerate(rows)]), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl key not matching its arch", "predictors",
       edit_jsonl(rec, lambda rows: [r | {"key": rows[0]["key"]} if i == 2 else r for i, r in enumerate(rows)]),
       ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl record without metrics", "predictors",
       edit_jsonl(rec, lambda rows: [{k: v for k, v in r.items() if k != "metrics"} if i == 2 else r
                                     for i, r in enumerate(rows)]), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl a line that is a JSON list", "predictors", edit_jsonl(rec, lambda rows: rows + ["[1, 2]"]),
       ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl duplicate record with another loss", "predictors",
       edit_jsonl(rec, lambda rows: rows + [rows[2] | {"metrics": rows[2]["metrics"] | {"loss": 0.01}}]),
       ok=("clear", "recovered"), check=same_predictor)
    on(dl, "records.jsonl a folder", "predictors", make_dir(rec))

    sk = "predictors/predictor.skops"
    on(dl, "predictor.skops missing", "search", delete(sk))
    on(dl, "predictor.skops truncated", "search", truncate(sk))
    on(dl, "predictor.skops byte flipped", "search", flip(sk))
    on(dl, "predictor.skops not a zip", "search", not_json(sk))
    on(dl, "predictor.skops schema.json not JSON", "search", skops_schema_not_json)
    on(dl, "predictor.skops holds a numpy array", "search", skops_array)
    on(dl, "predictor.skops model replaced (another fitted regressor)", "search", skops_model(dummy_model))
    on(dl, "predictor.skops model replaced (another fitted regressor)", "run", skops_model(dummy_model),
       ok=("clear", "recovered"), check=run_rebuilt(sk))
    on(dl, "predictor.skops a folder", "search", make_dir(sk))
    pj = "predictors/predictor.json"
    on(dl, "predictor.json missing", "search", delete(pj))
    on(dl, "predictor.json not JSON", "search", not_json(pj))
    on(dl, "predictor.json a JSON list", "search", json_list(pj))
    on(dl, "predictor.json versions a string", "search", edit_json(pj, lambda d: d.update(versions="new")))
    on(dl, "predictor.json search_space of another experiment", "search",
       edit_json(pj, lambda d: d["search_space"].update(depth=[1, 2, 3])))
    plan = "predictors/plan.json"
    on(dl, "plan.json not JSON", "predictors", not_json(plan), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "plan.json fit keys edited", "predictors", edit_json(plan, lambda d: d["fit"].reverse()),
       ok=("clear", "recovered"), check=same_predictor)
    on(dl, "plan.json missing", "predictors", delete(plan), ok=("clear", "recovered"), check=same_predictor)
    on(dl, "predictors/report.json not JSON", "search", not_json("predictors/report.json"))
    on(dl, "predictors/report.json missing", "run", delete("predictors/report.json"), ok=("clear", "recovered"),
       check=run_rebuilt("predictors/report.json"))

    fr = "search/front.json"
    for rd in ("pareto", "export"):
        on(dl, "front.json truncated", rd, truncate(fr))
    on(dl, "front.json truncated", "run", truncate(fr), ok=("clear", "recovered"), check=run_rebuilt(fr))
    for rd in ("pareto", "export"):
        on(dl, "front.json member without key", rd, edit_json(fr, lambda d: d["front"][0].pop("key")))
    min_loss = lambda d: d["front"][1]["objectives"].__setitem__(0, d["front"][0]["objectives"][0] - 1)  # noqa: E731
    for rd in ("pareto", "export"):
        on(dl, "front.json objectives edited (member 1 made best)", rd, edit_json(fr, min_loss))
    on(dl, "front.json objectives edited (same size)", "export", edit_number(fr, "objectives", 2))
    on(dl, "front.json objectives edited (member 1 made best)", "run", edit_json(fr, min_loss),
       ok=("clear", "recovered"), check=run_rebuilt(fr))
    on(dl, "front.json not JSON", "pareto", not_json(fr))
    on(dl, "front.json a JSON list", "export", json_list(fr))
    on(dl, "front.json front empty", "export", edit_json(fr, lambda d: d.update(front=[])))
    on(dl, "front.json objective NaN", "export",
       edit_json(fr, lambda d: d["front"][0]["objectives"].__setitem__(0, float("nan"))))
    on(dl, "front.json member arch outside the space (8 heads)", "export",
       edit_json(fr, lambda d: d["front"][0]["arch"]["layers"][0].update(n_heads=8)))
    on(dl, "front.json member key not its arch", "export", edit_json(fr, lambda d: d["front"][0].update(key=d["front"][1]["key"])))
    on(dl, "front.json member without arch", "export", edit_json(fr, lambda d: d["front"][0].pop("arch")))
    on(dl, "front.json member arch of 100000 layers", "export",
       edit_json(fr, lambda d: deep_arch(100_000)(d["front"][0]["arch"])), why="a small edit made export build a huge model")
    on(dl, "front.json without objective names", "pareto", edit_json(fr, lambda d: d.pop("objectives")))
    on(dl, "front.json member with one objective of two", "pareto",
       edit_json(fr, lambda d: d["front"][0].update(objectives=d["front"][0]["objectives"][:1])))
    on(dl, "front.json a folder", "pareto", make_dir(fr))
    on(dl, "front.json byte flipped", "export", flip(fr))
    on(dl, "search/summary.json missing", "run", delete("search/summary.json"), ok=("clear", "recovered"),
       check=run_rebuilt("search/summary.json"))
    on(dl, "search/summary.json not JSON", "run", not_json("search/summary.json"), ok=("clear", "recovered"),
       check=run_rebuilt("search/summary.json"))
    on(dl, "candidates.csv truncated", "pareto", truncate("search/candidates.csv"))
    on(dl, "candidates.csv objective not a number", "pareto",
       lambda ctx: (p := ctx.run / "search" / "candidates.csv").write_text(
           re.sub(r"\n([^,\n]*),[-0-9.e]+", r"\n\1,abc", p.read_text(), count=1)))
    on(dl, "candidates.csv missing", "pareto", delete("search/candidates.csv"))
    on(dl, "validation.json not JSON", "pareto", not_json("search/validation.json"))
    add(dl, "study.db garbage -> search (optuna)", COMMANDS["search"],
        both(optuna_setup, lambda ctx: (ctx.run / "search" / "study.db").write_bytes(b"SQLite format 3\0" + b"\x07" * 4000)))
    add(dl, "study.db of other objectives -> search (optuna)", COMMANDS["search"], foreign_study(["latency@cpu", "loss"], []))
    add(dl, "study.db of other constraints -> search (optuna)", COMMANDS["search"], foreign_study(["loss", "latency@cpu"],
                                                                                                 ["params <= 1m"]))

    # `hwnas run` finds a damaged export (its manifest) and makes it again: recovered, if the new one is intact
    for name, setup in (("export/config.json not JSON", not_json("export/config.json")),
                        ("export/config.json arch of another member", edit_json("export/config.json", lambda d: d.update(
                            arch=deep_arch(1)(d["arch"])))),
                        ("export/config.json arch not an arch", edit_json("export/config.json", lambda d: d.update(arch=[1]))),
                        ("model.safetensors NaN weights", sft_tensor("export/model.safetensors", set_nan)),
                        ("model.safetensors weights scaled x2 (same size)", sft_tensor("export/model.safetensors", scale)),
                        ("model.safetensors truncated", truncate("export/model.safetensors")),
                        ("model.safetensors header garbage (same size)", header_garbage("export/model.safetensors")),
                        ("model.safetensors metadata arch not JSON",
                         sft_header("export/model.safetensors", meta_set("arch", "{not json"))),
                        ("model.safetensors metadata arch of 10000 layers",
                         sft_header("export/model.safetensors", meta_json("arch", deep_arch(10_000)))),
                        ("model.safetensors metadata dims vocab 10**12",
                         sft_header("export/model.safetensors", meta_json("dims", lambda d: d | {"vocab_size": 10**12}))),
                        ("model.safetensors tensor tok_emb removed", sft_header("export/model.safetensors", drop_tensor))):
        rel = "export/config.json" if name.startswith("export/config.json") else "export/model.safetensors"
        on(dl, name, "run", setup, ok=("clear", "recovered"), check=run_rebuilt(rel))
    for name, rel, setup in (("export/config.json missing", "export/config.json", delete("export/config.json")),
                             ("model.safetensors missing", "export/model.safetensors", delete("export/model.safetensors")),
                             ("model.onnx truncated", "export/model.onnx", truncate("export/model.onnx")),
                             ("model.onnx missing", "export/model.onnx", delete("export/model.onnx")),
                             ("model.int8.onnx garbage", "export/model.int8.onnx", not_json("export/model.int8.onnx")),
                             ("export/report.json not JSON", "export/report.json", not_json("export/report.json"))):
        on(dl, name, "run", setup, ok=("clear", "recovered"), check=run_rebuilt(rel))
    add(dl, "export/config.json not JSON -> export --force", ["export", "{run}", "--config", "{config}", "--force",
                                                              "--no-progress"], not_json("export/config.json"))

    met = "train/metrics.jsonl"
    on(dl, "train/metrics.jsonl torn last line", "resume", torn(met), ok=("clear", "recovered"), check=trained_to(16))
    on(dl, "train/metrics.jsonl garbage line", "resume",
       lambda ctx: (p := ctx.run / met).write_text("{\"step\": 1, \"loss\n" + p.read_text()),
       ok=("clear", "recovered"), check=trained_to(16))
    on(dl, "train/summary.json not JSON", "run", not_json("train/summary.json"), ok=("clear", "recovered"),
       check=run_rebuilt("train/summary.json"), timeout=240)
    pp = "pipeline.json"
    on(dl, "pipeline.json not JSON", "run", not_json(pp), ok=("clear", "recovered"), check=run_rebuilt(pp), timeout=240)
    on(dl, "pipeline.json a JSON list", "run", json_list(pp), ok=("clear", "recovered"), check=run_rebuilt(pp), timeout=240)
    on(dl, "pipeline.json stages a string", "run", edit_json(pp, lambda d: d.update(stages="done")),
       ok=("clear", "recovered"), check=run_rebuilt(pp), timeout=240)
    on(dl, "pipeline.json a folder", "run", make_dir(pp), ok=("clear", "recovered"), check=run_rebuilt(pp), timeout=240)

    # --- the run directory itself --------------------------------------------------------------------------------
    mk = "mistakes"
    for cmd in ("train", "latency", "predictors", "search", "run"):
        add(mk, f"run_dir is a regular file -> {cmd}", COMMANDS[cmd], run_dir_at("afile.txt"), fresh=True)
    add(mk, "run_dir is a regular file -> pareto", ["pareto", "{file}"], fresh=True)
    add(mk, "run_dir is a regular file -> export", ["export", "{file}", "--no-progress"], fresh=True)
    for cmd in ("train", "run"):
        add(mk, f"run_dir inside a regular file -> {cmd}", COMMANDS[cmd], run_dir_at("afile.txt/run"), fresh=True)
    for cmd in ("predictors", "search", "pareto", "export"):
        add(mk, f"empty run_dir (stages before not run) -> {cmd}", COMMANDS[cmd], run_dir_at("empty", "dir"), fresh=True)
    add(mk, "run_dir under /proc (not writable) -> train", COMMANDS["train"], set_value("run_dir", "/proc/hwnas-run"), fresh=True)
    add(mk, "export --out under /proc (not writable)", ["export", "{run}", "--config", "{config}", "--out", "/proc/hwnas-out",
                                                       "--no-progress"])
    add(mk, "export --out inside a regular file", ["export", "{run}", "--config", "{config}", "--out", "{file}/sub",
                                                  "--no-progress"])
    add(mk, "export --out /dev/null", ["export", "{run}", "--config", "{config}", "--out", "/dev/null", "--no-progress"])
    add(mk, "export --out is the run dir, --force", ["export", "{run}", "--config", "{config}", "--out", "{run}", "--force",
                                                   "--no-progress"])
    add(mk, "export --out is run/train, --force", ["export", "{run}", "--config", "{config}", "--out", "{run}/train",
                                                  "--force", "--no-progress"])
    add(mk, "export --out exists, no --force", ["export", "{run}", "--config", "{config}", "--no-progress"])
    add(mk, "export.out_dir under /proc -> run (export re-run)", COMMANDS["run"], set_value("export.out_dir", "/proc/hwnas-out"))
    add(mk, "config path is the run dir", ["space", "{run}"])
    add(mk, "config file missing", ["space", "{dir}/missing.yaml"], fresh=True)
    add(mk, "config is a folder", ["train", "{dir}"], fresh=True)
    add(mk, "pareto given the config file", ["pareto", "{config}"])
    add(mk, "pareto on a missing dir", ["pareto", "{dir}/nowhere"], fresh=True)
    add(mk, "export given the config file as run dir", ["export", "{config}", "--no-progress"])
    add(mk, "export of a missing run dir", ["export", "{dir}/nowhere", "--no-progress"], fresh=True)
    add(mk, "export --config missing file", ["export", "{run}", "--config", "{dir}/missing.yaml", "--out", "{dir}/exp"])
    add(mk, "hwnas without a command", [], fresh=True)
    add(mk, "unknown command", ["fly", "{config}"], fresh=True)
    add(mk, "run without a config", ["run"], fresh=True)
    add(mk, "unknown option", ["train", "{config}", "--fast"], fresh=True)
    add(mk, "train --wandb bogus", ["train", "{config}", "--wandb", "bogus"], fresh=True)
    add(mk, "export --set without --config", ["export", "{run}", "--set", "export.eval_tokens=abc", "--out", "{dir}/exp"])
    add(mk, "export --set of another section without --config", ["export", "{run}", "--set", "train.steps=5", "--out", "{dir}/exp"])

    # --- command-line values ---------------------------------------------------------------------------------------
    v = "values"
    for name, args in (("space -n -1", ["-n", "-1"]), ("space -n abc", ["-n", "abc"]), ("space -n 10**9", ["-n", "1000000000"]),
                       ("space --seed -1", ["--seed", "-1"]),
                       ("space --seed of 3000 digits", ["--seed", "9" * 3000])):
        add(v, name, ["space", "{config}", *args], fresh=True, timeout=60)
    for name, args in (("search --workers 0", ["--workers", "0"]), ("search --workers -1", ["--workers", "-1"]),
                       ("search --workers abc", ["--workers", "abc"])):
        add(v, name, [*COMMANDS["search"], *args])
    add(v, "search --workers 2 with engine pymoo", [*COMMANDS["search"], "--workers", "2"])
    add(v, "latency --device cuda without a GPU", [*COMMANDS["latency"], "--device", "cuda"])
    add(v, "latency --backend tensorrt", [*COMMANDS["latency"], "--backend", "tensorrt"])
    for name, pick in (("-1", "-1"), ("99", "99"), ("of 5000 digits", "1" * 5000), ("empty", ""), ("min nonsense", "min nonsense"),
                       ("rule with a bad constraint", "min loss where latency@cpu <= abc"), ("unknown arch key", "e99-L9:zz")):
        add(v, f"export --pick {name}", [*COMMANDS["export"], "--pick", pick])
    add(v, "export --finetune-steps -1", [*COMMANDS["export"], "--finetune-steps", "-1"])
    add(v, "export --finetune-steps 10**12", [*COMMANDS["export"], "--finetune-steps", str(10**12)], timeout=60)

    # --- config values ------------------------------------------------------------------------------------------------
    def val(path: str, value: Any, cmd: str = "space", **kw) -> None:
        fresh = cmd in ("space", "train")
        shown = value if not isinstance(value, (str, list)) or len(repr(value)) < 40 else f"{repr(value)[:30]}..."
        add(v, f"{path}: {shown!r} -> {cmd}", COMMANDS[cmd], set_value(path, value), fresh=fresh, **kw)

    big = 10**9
    for value in (-1, 2**63, 1.5, True):
        val("seed", value)
    val("seed", -1, "train")
    val("seed", 2**64, "train")
    for value in ("", "a/b", 5):
        val("name", value)
    val("run_dir", 5)
    val("run_dir", "", "train", why="an empty run_dir made hwnas write into the current folder")
    for value in (0, 10**30):
        val("search_space.vocab_size", value)
    val("search_space.vocab_size", big, "train")
    for value in (0, 2**70):
        val("search_space.block_size", value)
    val("search_space.block_size", big, "train")
    val("search_space.head_dim", 0)
    val("search_space.head_dim", big, "train")
    for value in ([], [0], [1, 1], [10**6], [2**70]):
        val("search_space.depth", value, timeout=60)
    for value in ([], [16, 16], [16.0]):
        val("search_space.embed_dim", value)
    val("search_space.embed_dim", [big], "train")
    for path, value in (("n_heads.choices", [0]), ("n_heads.per_layer", "yes"), ("n_heads", [1, 2]), ("mlp_ratio.choices", [0.0]),
                        ("mlp_ratio.choices", [1e308]), ("mlp_ratio.choices", [float("nan")]),
                        ("mlp_ratio", {}), ("norm.choices", ["batchnorm"]),
                        ("attention.windows", [64]), ("ffn.top_k", [3]), ("ffn.experts", [3]), ("weight_bits.choices", [8.0]),
                        ("weight_bits.choices", [16, 16]), ("heads", [1, 2])):
        val(f"search_space.{path}", value)
    for path, value in (("steps", 0), ("steps", -1), ("steps", 12.0), ("batch_size", 0), ("lr", -1.0), ("lr", float("nan")),
                        ("warmup_steps", -1), ("val_fraction", 1.5), ("ckpt_every", 0), ("corpus", "/nonexistent/text"),
                        ("seq_len", 64), ("threads", 0), ("device", "cuda"), ("distill_weight", 2.0), ("ema_decay", 1.0),
                        ("max_nonfinite", 0), ("eval_tokens", 8)):
        val(f"train.{path}", value, "train")
    val("train.steps", 10**12, "train", timeout=60, why="a run of 10**12 steps was started instead of refused")
    val("train.batch_size", big, "train")
    val("train.threads", 10**6, "train")
    add(v, "train.corpus: an empty folder -> train", COMMANDS["train"],
        lambda ctx: ((ctx.dir / "empty-text").mkdir(), ctx.cfg["train"].update(corpus=str(ctx.dir / "empty-text"))), fresh=True)
    for path, value in (("backends", []), ("backends", ["tensorrt"]), ("backends", ["torch", "torch"]), ("devices", ["cuda"]),
                        ("threads", 0), ("max_repeats", 2), ("max_seconds", float("nan")), ("seed", -1), ("seed", 2**64),
                        ("speed", True)):
        val(f"latency.{path}", value, "latency")
    for path, value in (("n_fit", 1), ("n_heldout", -1), ("models", []), ("models", ["ridge", "ridge"]), ("cv_folds", 1),
                        ("cv_folds", 100), ("seed", -1), ("seed", 2**64), ("seq_len", 64), ("eval_tokens", 8)):
        val(f"predictors.{path}", value, "predictors")
    val("predictors.n_fit", big, "predictors", timeout=60)
    for path, value in (("objectives", []), ("objectives", ["accuracy"]), ("objectives", ["loss", "loss"]),
                        ("objectives", ["latency@gpu"]), ("constraints", ["latency@cpu <= abc"]), ("constraints", ["params <= -1"]),
                        ("constraints", ["foo <= 5"]), ("constraints", ["latency@cpu <= 5kb"]), ("constraints", ["loss <= 5ms"]),
                        ("constraints", ["latency@cpu <= -5ms"]),
                        ("engine", "gradient"), ("algorithm", "foo"), ("budget", 0), ("population", 1), ("workers", 0), ("workers", 2), ("risk", 1.5),
                        ("ref_point", [float("nan"), float("nan")]), ("latency_backend", "onnxruntime"), ("generations", 5)):
        val(f"search.{path}", value, "search")
    add(v, "search.storage: 'notadb://x' (engine optuna) -> search", COMMANDS["search"],
        both(optuna_setup, set_value("search.storage", "notadb://x")))
    add(v, "search.storage: a journal file in a missing folder (engine optuna) -> search", COMMANDS["search"],
        both(optuna_setup, set_value("search.storage", "journal:/proc/hwnas/journal.log")))
    val("search.budget", 10**12, "search", timeout=60)
    val("search.population", big, "search", timeout=60)
    for path, value in (("pick", ""), ("pick", "99"), ("pick", "1" * 5000), ("eval_tokens", 0), ("eval_tokens", 8),
                        ("finetune_steps", -1), ("seed", -1), ("seed", 2**64), ("format", "onnx")):
        val(f"export.{path}", value, "export")
    val("export.finetune_steps", 10**12, "export", timeout=60)

    # --- the YAML file itself ----------------------------------------------------------------------------------------------
    def text_case(name: str, fn: Callable[[str], str | bytes], cmd: str = "space") -> None:
        def setup(ctx: Ctx) -> None:
            new = fn(yaml.safe_dump(ctx.cfg))
            if isinstance(new, bytes):
                ctx.config_bytes = new
            else:
                ctx.config_text = new
        add(v if "key" in name or "nesting" in name else mk, name, COMMANDS[cmd], setup, fresh=cmd in ("space", "train"))

    text_case("duplicate top-level key (seed twice)", lambda t: t + "seed: 5\n")
    text_case("duplicate section (train twice)", lambda t: t + "train:\n  steps: 99\n")
    text_case("duplicate nested key (train.steps twice)", lambda t: t.replace("train:\n", "train:\n  steps: 99\n", 1))
    text_case("duplicate nested key (train.steps twice) -> train", lambda t: t.replace("train:\n", "train:\n  steps: 9\n", 1),
              "train")
    text_case("unknown top-level key (trian)", lambda t: t + "trian:\n  steps: 5\n")
    text_case("wrong nesting: steps at the top level", lambda t: t + "steps: 12\n")
    text_case("wrong nesting: search_space a list", lambda t: re.sub(r"\nsearch_space:\n(  .*\n)+", "\nsearch_space: [1, 2]\n", t))
    text_case("wrong nesting: train a number", lambda t: re.sub(r"\ntrain:\n(  .*\n)+", "\ntrain: 12\n", t))
    text_case("wrong nesting: train null", lambda t: re.sub(r"\ntrain:\n(  .*\n)+", "\ntrain: null\n", t))
    text_case("wrong nesting: search section inside train", lambda t: t.replace("train:\n", "train:\n  search:\n    budget: 5\n", 1))
    text_case("empty config file", lambda t: "")
    text_case("config is a YAML list", lambda t: "- name: tiny\n")
    text_case("config is a YAML scalar", lambda t: "tiny\n")
    text_case("config not valid YAML", lambda t: t + "search: [unclosed\n")
    text_case("config indented with tabs", lambda t: t.replace("\n  ", "\n\t"))
    text_case("config not UTF-8", lambda t: t.encode() + b"name2: \xff\xfe\n")
    text_case("config in UTF-16", lambda t: t.encode("utf-16"))

    # --- processes ------------------------------------------------------------------------------------------------------
    pr = "processes"
    for sig, group, label in ((signal.SIGKILL, False, "SIGKILL"), (signal.SIGTERM, False, "SIGTERM"),
                              (signal.SIGINT, True, "Ctrl-C (SIGINT to the group)")):
        add(pr, f"{label} of search --workers 2 (optuna), then resume", None, optuna_setup, ok=("recovered", "clear"),
            check=rebuilt("search/front.json"), driver=kill_search(sig, group), timeout=300)
    add(pr, "SIGKILL of run mid-search, then run again", None, rerun_search, ok=("recovered", "clear"),
        check=complete_run, driver=kill_then_rerun(COMMANDS["run"], after_line("[search] running", 4.0)), timeout=300)
    add(pr, "SIGKILL of run mid-train, then run again", None, steps_16, ok=("recovered", "clear"), check=complete_run,
        driver=kill_then_rerun(COMMANDS["run"], after_line("[train] running", 4.0)), timeout=400)
    add(pr, "SIGKILL of train after its first checkpoint, then train again", None,
        lambda ctx: ctx.cfg["train"].update(steps=40), fresh=True, ok=("recovered", "clear"), check=trained_to(40),
        driver=kill_then_rerun(COMMANDS["train"], after_file("train/checkpoint.safetensors", 0.5)), timeout=300)
    add(pr, "SIGKILL of latency mid-build, then latency again", None, delete("latency"), ok=("recovered", "clear"),
        check=full_table, driver=kill_then_rerun(COMMANDS["latency"], after_seconds(9.0)), timeout=300)
    add(pr, "SIGKILL of predictors mid-evaluation, then predictors again", None,
        both(delete("predictors"), set_value("predictors.eval_tokens", 8192)), ok=("recovered", "clear"), check=predictor_done,
        driver=kill_then_rerun(COMMANDS["predictors"], _records_grew(6)), timeout=300)
    add(pr, "SIGKILL of export --force mid-way, then export --force again", None, None, ok=("recovered", "clear"),
        check=lambda ctx: None if (ctx.run / "export" / "model.onnx").is_file() else "no export after the re-run",
        driver=kill_then_rerun(["export", "{run}", "--config", "{config}", "--force", "--no-progress"], after_seconds(7.0)),
        timeout=300)
    return out
