"""The status page in a real headless browser (Debian's chromium), no broker: a page that
frames it 420 px wide measures the layout and the health dot, and --dump-dom reads out what
it measured. The worker-backed check of the page is in test_node."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from stream_replica.http_app import HealthRules, build_app
from stream_replica.status import PartitionRow
from tests.test_http_app import FakeWorker

PROBE = """<!doctype html><html><body style="margin:0">
<iframe id="page" src="/" width="420" height="900" style="border:0"></iframe>
<pre id="measured">pending</pre>
<script>
  function measure() {
    const d = document.getElementById("page").contentDocument;
    if (!d || d.querySelectorAll("td.role").length < 6) { setTimeout(measure, 50); return; }
    const w = d.defaultView, table = d.querySelector("table"), box = table.parentElement;
    document.getElementById("measured").textContent = JSON.stringify({
      role_header: w.getComputedStyle(d.querySelectorAll("thead th")[1]).textAlign,
      role_cell: w.getComputedStyle(d.querySelector("td.role")).textAlign,
      page_width: d.documentElement.scrollWidth,
      viewport: d.documentElement.clientWidth,
      box_right: box.getBoundingClientRect().right,
      box_overflow: w.getComputedStyle(box).overflowX,
      table_right: table.getBoundingClientRect().right,
      dot: d.getElementById("health").className,
    });
  }
  measure();
</script></body></html>"""


async def measured(server: TestServer) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--virtual-time-budget=5000", "--dump-dom", str(server.make_url("/probe")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-2000:]
    text = out.decode()
    start = text.index('<pre id="measured">') + len('<pre id="measured">')
    found = text[start : text.index("</pre>", start)]
    assert found != "pending", "the page drew no rows"
    result: dict[str, Any] = json.loads(found)
    return result


async def test_layout_at_420_px_and_the_health_dot_follow_the_settings() -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    worker = FakeWorker()
    snapshot = worker.snapshot
    snapshot.assigned = True
    snapshot.partitions = {
        p: PartitionRow(
            "active" if p % 2 else "standby", 123_456, 132_456, p < 4, 9_000 if p == 5 else 0
        )
        for p in range(6)
    }
    snapshot.last_poll_age_s = 45.0  # healthy under --health-max-poll-age-s 60 (not 30)
    app = build_app(worker, HealthRules(max_poll_age_s=60.0))

    async def probe(_: web.Request) -> web.Response:
        return web.Response(text=PROBE, content_type="text/html")

    app.router.add_get("/probe", probe)
    server = TestServer(app)
    await server.start_server()
    try:
        found = await measured(server)
        assert found["role_header"] == found["role_cell"] == "left", found
        # The page never scrolls sideways; the table fits its box, or scrolls inside it.
        assert found["page_width"] <= found["viewport"], found
        assert found["box_right"] <= found["viewport"], found
        assert found["table_right"] <= found["box_right"] or found["box_overflow"] == "auto"
        assert found["dot"] == "dot up", found

        snapshot.last_poll_age_s = 61.0  # /healthz fails: the dot too
        assert (await measured(server))["dot"] == "dot down"
    finally:
        await server.close()
