"""Which PR comments ask for ``/rerun-regression``: its own line of the comment's text."""

from __future__ import annotations

import pytest

from bot.routers.comments import asks_for_rerun


@pytest.mark.parametrize(
    "body",
    [
        "/rerun-regression",
        "  /rerun-regression  ",
        "Thanks!\n/rerun-regression\n",
        "/Rerun-Regression",
        "/RERUN-REGRESSION",
        "```\nnot this\n```\n/rerun-regression",
        "<!-- a note -->\n/rerun-regression",
        "text <!-- a note --> more\r\n/rerun-regression\r\n",
    ],
)
def test_the_command_on_its_own_line_asks(body):
    assert asks_for_rerun(body)


@pytest.mark.parametrize(
    "body",
    [
        None,
        "",
        "please /rerun-regression",
        "/rerun-regression now",
        "```\n/rerun-regression\n```",
        "~~~sh\n/rerun-regression\n~~~",
        "````\n```\n/rerun-regression\n```\n````",
        "```\nnever closed\n/rerun-regression",
        "> /rerun-regression",
        ">/rerun-regression",
        "> > /rerun-regression",
        "<!-- /rerun-regression -->",
        "<!--\n/rerun-regression\n-->",
        "<!-- never closed\n/rerun-regression",
        "    /rerun-regression",
        "\t/rerun-regression",
    ],
)
def test_the_command_quoted_fenced_indented_or_hidden_does_not(body):
    assert not asks_for_rerun(body)
