"""The trend page as a static site in the store, for readers who cannot reach the bot:

    python -m bot.pages.site --store gs://bucket/prefix --repository owner/name

writes ``site/<owner>/<name>/index.html`` (the data embedded, every metric, the filters)
and the scripts it loads under ``site/static/`` (named by version or content, written
once), and prints the page's address.
"""

from __future__ import annotations

import argparse
import sys

from bot.pages.serve import scripts
from bot.pages.trend_page import trend_page
from bot.pages.trends import DEFAULT_LAST, default_band, trend_data
from runner.publish.history import ALL_SETS, read_history
from runner.store import IMMUTABLE, ArtifactStore, StoreError, open_store


def publish_site(store: ArtifactStore, repository: str, last: int = DEFAULT_LAST) -> str:
    """Write ``repository``'s trend page and its scripts into ``store``; its address."""
    data = trend_data(read_history(store, repository), repository, None, last)
    sources = []
    for address, path in scripts().items():
        key = "site/static/" + address.rsplit("/", 1)[1]
        if not store.exists(key):
            store.put(key, path.read_bytes(), "text/javascript", IMMUTABLE)
        sources.append(store.url(key))
    page = trend_page(data, sources, ALL_SETS, default_band(data["bands"]))
    key = f"site/{repository}/index.html"
    store.put(key, page.encode(), "text/html; charset=utf-8")
    return store.url(key)


def main(argv: list[str] | None = None) -> int:
    """Publish the static trend page of one repository."""
    parser = argparse.ArgumentParser(prog="python -m bot.pages.site", description=__doc__)
    parser.add_argument("--store", required=True, help="a directory or gs://bucket/prefix")
    parser.add_argument("--store-url", help="public address of the store (default: its own)")
    parser.add_argument("--repository", required=True, help="owner/name")
    parser.add_argument("--last", type=int, default=DEFAULT_LAST, help="merges shown as boxes")
    args = parser.parse_args(argv)
    try:
        store = open_store(args.store, base_url=args.store_url)
        print(publish_site(store, args.repository, args.last))
    except (StoreError, ValueError) as error:
        print(f"error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
