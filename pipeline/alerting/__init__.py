"""The alert rule engine: YAML rules evaluated on event time over the pipeline's topics, and the alert
lifecycle (pending -> firing -> resolved, acked, silenced, flapping) published on ``ops.alerts.v1``.

Stages, one module each, pass frozen structs along: ``sources`` (topic record -> :class:`Sample`),
``evaluate`` (samples and time -> :class:`Observation`), ``lifecycle`` (observations -> phase
changes), ``flap``, ``inhibit``, ``silence`` (how a phase is presented), ``engine`` (composition,
versions, the :class:`~pipeline.contracts.records.Alert` records), ``runner`` (the Kafka loop with
restore and checkpoints), ``control`` (operator commands through topics).
"""
