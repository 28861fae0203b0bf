"""``marketprism run``: every component of the pipeline as a supervised child process on one machine."""
