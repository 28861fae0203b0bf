"""Exchange simulator: synthetic markets served over the venues' real websocket and REST protocols,
with scripted incidents written to a labels file (``docs/simulator.md``).

Modules: ``base`` (errors, frames, exact formatting), ``instruments`` (venue symbols and precision),
``market`` (fair prices, regimes, books, trades), ``scenario`` (the YAML scenario, validated),
``incidents`` (what each incident kind does), ``labels`` (the labels JSONL), ``engine`` (the pure,
seeded event generator), ``protocols/<venue>`` (one wire encoder per venue), ``server`` (aiohttp
loopback endpoints), ``bench`` (frames/s measurement), ``cli`` (``marketprism simulate`` and
``marketprism bench simulate``).
"""
