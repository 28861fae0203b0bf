"""The one-command demo: every component as a child process on the embedded defaults, a live view, a summary."""
