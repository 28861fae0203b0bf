"""The notifier: routes alert state changes from ``ops.alerts.v1`` to people.

Flow: ``group`` (routing tree + Alertmanager-style aggregation timers) and ``escalate`` decide *when*
a group of alerts is due; each due group becomes a :class:`~pipeline.notify.base.Batch` that runs
through its receiver's stage chain (``stages``): a fan-out over the receiver's channels, each a
sequence of ``dedup`` (idempotency key, notification log) -> ``ratelimit`` -> ``retry`` (channel
call, one receipt per attempt on ``ops.notifications.v1``, a dead letter after the last attempt).
``service`` connects it to Kafka; ``cli`` is ``marketprism notify``.
"""
