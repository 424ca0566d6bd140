"""The README's picture of a PR comment: the demo's comment as GitHub would show it.

    bash scripts/demo.sh
    .venv/bin/uv run --no-project --with cmarkgfm --with pillow \
        python scripts/screenshot_comment.py [--comment demo/report/comment.md] \
        [--out docs/img/comment.png] [--width 1000] [--max-height 1130]

Renders the comment's Markdown with GitHub's own renderer (cmark-gfm, through the
``cmarkgfm`` wheel) into a page styled like a comment on github.com, takes a screenshot
with Debian's headless ``chromium`` (emoji need Debian's ``fonts-noto-color-emoji``),
trims the blank below the comment, cuts it at ``--max-height`` pixels and stores it as a
palette PNG (at most 150 KB).
"""

from __future__ import annotations

import argparse
import html
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cmarkgfm
from cmarkgfm.cmark import Options
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 150_000
BOT = "scarlet-regression[bot]"
# The parts of GitHub's Markdown style a report comment uses (github-markdown-css, light).
CSS = """
body { margin: 0; padding: 16px; background: #fff; color: #1f2328;
  font: 14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", "Noto Sans", Helvetica,
  Arial, sans-serif; }
.comment { border: 1px solid #d1d9e0; border-radius: 6px; }
.header { background: #f6f8fa; border-bottom: 1px solid #d1d9e0; padding: 8px 16px;
  border-radius: 6px 6px 0 0; color: #59636e; }
.header b { color: #1f2328; }
.label { border: 1px solid #d1d9e0; border-radius: 2em; padding: 0 7px; font-size: 12px;
  margin-left: 4px; }
.body { padding: 16px; word-wrap: break-word; }
.body > :first-child { margin-top: 0; }
h1, h2, h3, h4 { margin: 24px 0 16px; font-weight: 600; line-height: 1.25; }
h1 { font-size: 2em; padding-bottom: .3em; border-bottom: 1px solid #d1d9e0; }
h2 { font-size: 1.5em; padding-bottom: .3em; border-bottom: 1px solid #d1d9e0; }
h3 { font-size: 1.25em; } h4 { font-size: 1em; }
p, ul, ol, table, details, blockquote { margin: 0 0 16px; }
ul, ol { padding-left: 2em; }
a { color: #0969da; text-decoration: none; }
code { font: 85% ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: #818b981f; border-radius: 6px; padding: .2em .4em; }
pre { background: #f6f8fa; border-radius: 6px; padding: 16px; overflow: auto; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; display: block; width: max-content; max-width: 100%;
  overflow: auto; }
th, td { border: 1px solid #d1d9e0; padding: 6px 13px; }
th { font-weight: 600; } tr:nth-child(2n) { background: #f6f8fa; }
img { max-width: 100%; }
blockquote { color: #59636e; border-left: .25em solid #d1d9e0; padding: 0 1em; }
summary { cursor: pointer; }
"""


def page(markdown: str, base: Path) -> str:
    """The comment as a page: GitHub's rendering of its Markdown in a comment box."""
    body = cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE)
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><base href="{base.as_uri()}/">'
        f"<style>{CSS}</style></head><body><div class=comment>"
        f"<div class=header><b>{html.escape(BOT)}</b> <span class=label>bot</span>"
        f" commented</div><div class=body>{body}</div></div></body></html>"
    )


def screenshot(html_file: Path, png: Path, width: int, height: int) -> None:
    """A headless chromium screenshot of ``html_file``, ``width`` × ``height`` pixels."""
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("error: Debian's chromium is needed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={png}",
                html_file.as_uri(),
            ],
            check=True,
            capture_output=True,
        )


def trimmed(image: Image.Image, max_height: int) -> Image.Image:
    """The image without the white below its content, at most ``max_height`` tall."""
    rgb = image.convert("RGB")
    box = ImageChops.difference(rgb, Image.new("RGB", rgb.size, "white")).getbbox()
    bottom = min((box[3] + 16) if box else rgb.height, max_height, rgb.height)
    return rgb.crop((0, 0, rgb.width, bottom))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comment", type=Path, default=ROOT / "demo/report/comment.md")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/comment.png")
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--max-height", type=int, default=1130)
    args = parser.parse_args(argv)
    if not args.comment.exists():
        sys.exit(f"error: no {args.comment}: run `bash scripts/demo.sh` first")
    fonts = subprocess.run(["fc-list"], capture_output=True, text=True).stdout
    if "emoji" not in fonts.lower():
        print("warning: no emoji font: apt-get install fonts-noto-color-emoji", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        html_file, shot = Path(scratch) / "comment.html", Path(scratch) / "shot.png"
        html_file.write_text(page(args.comment.read_text(), args.comment.resolve().parent))
        screenshot(html_file, shot, args.width, args.max_height + 400)
        image = trimmed(Image.open(shot), args.max_height)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for colours in (128, 64, 32):
        image.quantize(colours).save(args.out, optimize=True)
        if args.out.stat().st_size <= MAX_BYTES:
            break
    size = args.out.stat().st_size
    print(f"{args.out}: {image.width}×{image.height} px, {size / 1000:.0f} kB")
    return 0 if size <= MAX_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
