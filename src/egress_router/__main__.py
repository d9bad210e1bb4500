"""Allows ``python -m egress_router``, the same entry point as the console script."""

from egress_router.cli import main

if __name__ == "__main__":
    main()
