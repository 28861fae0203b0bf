"""A minimal Faust app built by the factory, run as a real worker process by test_faust_app."""

from __future__ import annotations

import os

from pipeline.kafka.faust_app import create_app
from pipeline.settings import load_settings

settings = load_settings()
app = create_app(settings, os.environ["ECHO_APP_ID"])
source = app.topic(settings.topic("md.trades.v1"))
sink = app.topic(settings.topic("ops.dlq.v1"))


@app.agent(source)
async def echo(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value)


if __name__ == "__main__":
    app.main()
