"""Server side: the ServerApp, centralized evaluation, and run results."""
