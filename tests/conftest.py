"""Shared fixtures and hypothesis strategies for the search-space, config and CLI tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

from hwnas.search_space import SearchSpace, SearchSpaceConfig
from tests.tiny import hwnas, stdlib_text, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
# the interpreter running the tests is the venv's; its `hwnas` console script sits beside it
VENV_BIN = Path(sys.executable).parent
QUICKSTART_SIZE = 1_589_326_982_208


def pytest_configure(config):
    """Under `pytest -n K` (pytest-xdist) each worker shares the cores with the others: one torch thread
    each, as their subprocesses run, since OpenMP threads on a busy core wait for each other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def quickstart_space() -> SearchSpace:
    from hwnas.config import load_config

    return SearchSpace(load_config(QUICKSTART).search_space)


@pytest.fixture(scope="session")
def tiny_master(tmp_path_factory) -> tuple[Path, Path]:
    """(config, run dir) of the tiny experiment after one whole `hwnas run` (made once per session,
    about a minute); tests take a copy (`tiny_run`), never this one."""
    root = tmp_path_factory.mktemp("tiny-master")
    config = write_config(root / "tiny.yaml", tiny_config(root / "run", stdlib_text(root / "text")))
    proc = hwnas("run", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return config, root / "run"


@pytest.fixture
def tiny_run(tiny_master, tmp_path) -> tuple[Path, Path]:
    """(config, run dir): a private copy of the finished tiny run, its config pointing at it."""
    import shutil

    import yaml

    config, run = tiny_master
    shutil.copytree(run, tmp_path / "run")
    cfg = yaml.safe_load(config.read_text()) | {"run_dir": str(tmp_path / "run")}
    return write_config(tmp_path / "tiny.yaml", cfg), tmp_path / "run"


def _subset(values, min_size: int = 1):
    """A non-empty list of distinct values from `values`, in a drawn order."""
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=len(values), unique=True)


@st.composite
def space_configs(draw) -> SearchSpaceConfig:
    """Varied valid search spaces: different depth lists, widths, choices and per-layer flags.

    Embed dims are multiples of 8 and ratios in {1, 1.5, 2, 4}, so every hidden size is a multiple
    of 8 and experts 2 and 4 divide it; windows fit the block size 16.
    """
    ffn_choices = draw(_subset(["mlp", "swiglu", "moe"]))
    experts = draw(_subset([2, 4]))
    top_k = draw(_subset([k for k in (1, 2, 4) if k <= max(experts)]))
    flag = st.booleans()
    return SearchSpaceConfig(
        vocab_size=draw(st.sampled_from([16, 32])),
        block_size=16,
        head_dim=draw(st.sampled_from([4, 8])),
        depth=draw(_subset([1, 2, 3, 4])),
        embed_dim=draw(_subset([8, 16, 32])),
        n_heads={"choices": draw(_subset([1, 2, 4])), "per_layer": draw(flag)},
        mlp_ratio={"choices": draw(_subset([1.0, 1.5, 2.0, 4.0])), "per_layer": draw(flag)},
        norm={"choices": draw(_subset(["layernorm", "rmsnorm", "dyt"])), "per_layer": draw(flag)},
        norm_placement={"choices": draw(_subset(["pre", "post", "peri"])), "per_layer": draw(flag)},
        attention={
            "choices": draw(_subset(["softmax", "linear", "window"])),
            "windows": draw(_subset([2, 4, 8])),
            "per_layer": draw(flag),
        },
        ffn={"choices": ffn_choices, "experts": experts, "top_k": top_k, "per_layer": draw(flag)},
        weight_bits={"choices": draw(_subset([16, 8, 4])), "per_layer": draw(flag)},
    )


spaces = space_configs().map(SearchSpace)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


# --- a real PostgreSQL server on loopback, for the shared-study search test ------------------------
def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


@pytest.fixture(scope="session")
def postgres_url():
    """Start a throwaway PostgreSQL server on 127.0.0.1 (initdb into a temp dir, pg_ctl start) and
    yield its URL; skip with the reason where the server binaries or the driver are missing."""
    import os
    import pwd
    import socket
    import subprocess

    pytest.importorskip("psycopg2", reason="psycopg2 (the PostgreSQL driver) is not installed")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))  # not under pytest's 0700 temp dir: the server user must reach it
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: use the postgres (or nobody) account
        user = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
        uid = pwd.getpwnam(user).pw_uid
        for path in (root, sock):
            os.chown(path, uid, -1)
        run_as = ["runuser", "-u", user, "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run([*run_as, initdb, "-D", str(data), "-U", "hwnas", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True, env=env)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} -c fsync=off"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-w", "-t", "60", "-l", str(root / "log"), "start"],
                   check=True, capture_output=True, env=env)
    try:
        yield f"postgresql+psycopg2://hwnas@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True, env=env)
        shutil.rmtree(root, ignore_errors=True)
