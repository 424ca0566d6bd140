"""The trend page's HTML, rendered from its data (pure). The plots are drawn in the
browser by ``/static/trends.js`` with plotly.js, from the data embedded in the page."""

from __future__ import annotations

import json
from html import escape
from typing import Any

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#1f2328}
h1{font-size:1.4em}nav{margin:.5em 0 1em}nav a{margin-right:.8em}
form{display:flex;gap:1.2em;align-items:center;margin:.8em 0;flex-wrap:wrap}
section{border-top:1px solid #d0d7de;padding-top:.5em;margin-top:1em}
section h2{font-size:1.1em;margin:.2em 0}.plot{height:430px}.note{color:#59636e}
"""


def _options(values: list[str], selected: str) -> str:
    return "".join(
        f'<option value="{escape(v)}"{" selected" if v == selected else ""}>{escape(v)}</option>'
        for v in values
    )


def _script_data(data: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no "</" can end it early)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def trend_page(data: dict[str, Any], scripts: list[str], selected_set: str, band: str) -> str:
    """The trend page of a repository: filters, an index of every metric and a plot each."""
    repository = escape(data["repository"])
    current = data["current"]
    title = f"scarlet regression trends: {repository}"
    if current:
        title += f" · PR #{current['pr']}"
    index = " · ".join(
        f'<a href="#metric-{escape(m["name"])}">{escape(m["label"])}</a>' for m in data["metrics"]
    )
    sections = "".join(
        f'<section id="metric-{escape(m["name"])}" data-band="{escape(m["band"] or "")}">'
        f'<h2>{escape(m["label"])}</h2><div class="plot"></div></section>'
        for m in data["metrics"]
    )
    pr_input = f'<input type="hidden" name="pr" value="{current["pr"]}">' if current else ""
    report = (
        f' · <a href="{escape(current["report"])}">report of PR #{current["pr"]}</a>'
        if current and current["report"]
        else ""
    )
    empty = "" if data["merges"] or current else "<p>No run has been recorded yet.</p>"
    tags = "".join(f'<script src="{escape(src)}"></script>' for src in scripts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>{title}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p class="note">Each box is the distribution over injected sources (or blends) of the head
of a merged branch, in merge order, with the PR highlighted beside them; the lower panel
is the median of every merge in the history.{report}</p>
<form method="get">{pr_input}
<label>blend set <select id="set" name="set">{_options(data["sets"], selected_set)}</select></label>
<label>band <select id="band" name="band">{_options(data["bands"], band)}</select></label>
<noscript><button>show</button></noscript></form>
<nav>{index}</nav>{empty}{sections}
<script type="application/json" id="trend-data">{_script_data(data)}</script>
{tags}
</body></html>
"""
