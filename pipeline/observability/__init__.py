"""Process observability: Prometheus metrics every component shares and logging set-up."""
