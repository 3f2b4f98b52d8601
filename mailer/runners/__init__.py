"""Long-running processes: the daemon, its scheduler and slots, the worker."""
