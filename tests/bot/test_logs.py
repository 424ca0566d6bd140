"""The bot's log lines: JSON on stdout as Cloud Logging reads them, about what they say."""

from __future__ import annotations

import asyncio
import json
import logging

from bot import logs


async def test_a_task_started_in_a_context_logs_its_fields_and_others_do_not(capsys):
    logs.configure()
    logs.configure()
    assert sum(isinstance(h, logs._Stdout) for h in logging.getLogger().handlers) == 1
    log = logging.getLogger("bot.test")

    async def work() -> None:
        await asyncio.sleep(0)
        log.warning("inside %s", "the job")

    with logs.context(job="j-1", repository="o/r", pr=None):
        task = asyncio.create_task(work())
    log.info("outside")
    await task
    lines = {
        line["message"]: line
        for line in map(json.loads, capsys.readouterr().out.splitlines())
        if line.get("logger") == "bot.test"
    }
    inside = lines["inside the job"]
    assert (inside["severity"], inside["job"], inside["repository"]) == ("WARNING", "j-1", "o/r")
    assert "pr" not in inside, "None is left out"
    assert lines["outside"]["severity"] == "INFO" and "job" not in lines["outside"]
