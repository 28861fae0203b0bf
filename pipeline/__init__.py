"""MarketPrism: crypto market data collection, stream processing and alerting on Kafka and ClickHouse."""

__version__ = "0.1.0"
