"""One module per venue protocol; ``VENUES`` maps an exchange id to its class."""
