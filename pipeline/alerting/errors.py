"""The alerting package's exceptions.

AlertingError
 +-- RuleLoadError     a rule file is invalid (message names file, rule and field)
 +-- BadInput          an input record or operator command cannot be used (goes to ops.dlq.v1)
"""

from __future__ import annotations


class AlertingError(Exception):
    """Root of every alerting error."""


class RuleLoadError(AlertingError):
    """A rule file could not be loaded; the message names the file, the rule and the field."""


class BadInput(AlertingError):
    """An input record or command the engine cannot use; ``reason`` is the DLQ reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
