"""Collectors: venue websockets to Kafka, exact and self-healing (see ``base`` for the contract)."""
