"""Command line entry point (filled in by the gateway work)."""


def main() -> int:
    """Run the gateway CLI."""
    return 0
