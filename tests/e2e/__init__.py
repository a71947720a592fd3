"""End-to-end tests: the commands a newcomer runs."""
