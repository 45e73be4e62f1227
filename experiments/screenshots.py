"""Look at a run's plots as a user would: every HTML plot rendered by headless Chromium, offline.

    python experiments/screenshots.py runs/quickstart [--out runs/quickstart/screenshots]

For each `*.html` under the run directory: refuses a page that would fetch anything from the network
(`hwnas.core.plotting.remote_resources`), renders it with Chromium (`--headless`, no network) to
`<out>/<folder>_<name>.png`, and checks the picture is not blank (a plot draws on at least 3% of the
window; an HTML file whose plotly.js failed to load renders white). The PNG plots are listed next
to them. Prints one line per plot and exits 1 when any check fails.

Chromium comes from Debian's packages (`apt-get install chromium`); without it the script says so
and exits 2.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
MIN_INK = 0.03  # share of the window a rendered plot covers, at least


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def render(browser: str, html: Path, png: Path, size: tuple[int, int] = (1000, 800), timeout: float = 60) -> None:
    """`html` as Chromium draws it, `size` pixels, into `png` (the page's scripts get 10 s of virtual time)."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--proxy-server=127.0.0.1:9",  # no network: a CDN script fails as offline
               f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=10000", f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"{html}: chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")


def ink(png: Path) -> float:
    """The share of pixels that are not (near) white."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
    return float((pixels < 245).mean())


def check_run(run_dir: Path, out: Path, browser: str) -> list[dict]:
    from hwnas.core.plotting import remote_resources

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for html in sorted(p for p in run_dir.rglob("*.html") if out not in p.parents):
        png = out / f"{html.parent.name}_{html.stem}.png"
        png.unlink(missing_ok=True)
        remote = remote_resources(html.read_text(encoding="utf-8", errors="replace"))
        render(browser, html, png)
        share = ink(png)
        problems = [f"fetches {', '.join(remote)}"] * bool(remote) + [f"blank ({share:.1%} ink)"] * (share < MIN_INK)
        rows.append({"html": str(html), "png": str(png), "ink": share, "problems": problems})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, help="where the screenshots go (default: RUN_DIR/screenshots)")
    args = ap.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print(f"no headless browser found ({', '.join(BROWSERS)}); install one: apt-get install chromium", file=sys.stderr)
        return 2
    if not args.run_dir.is_dir():
        print(f"run_dir {args.run_dir}: not a directory", file=sys.stderr)
        return 2
    rows = check_run(args.run_dir, args.out or args.run_dir / "screenshots", browser)
    for r in rows:
        print(f"{'FAIL' if r['problems'] else 'ok  '} {r['html']} -> {r['png']} ({r['ink']:.1%} ink){'; ' if r['problems'] else ''}"
              f"{'; '.join(r['problems'])}")
    for png in sorted(p for p in args.run_dir.rglob("*.png") if "screenshots" not in p.parts):
        print(f"png  {png}")
    failed = sum(bool(r["problems"]) for r in rows)
    print(f"{len(rows)} HTML plots rendered, {failed} failed")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
