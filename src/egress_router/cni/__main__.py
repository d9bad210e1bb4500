"""``python -m egress_router.cni``: the plugin without its console script."""

from egress_router.cni import main

main()
