"""The lab wing: a local world in network namespaces to run the router for real.

``world`` builds client, router, node, gateway and destination namespaces and is the one module
the tests import (``topology``: the test address plan of docs/architecture.md and the names;
``processes``: what runs inside the namespaces; ``demo``: the demo). ``server`` is the
destination server and client that record the peer address they saw; ``nameserver`` is a tiny
DNS server for DNS-name destinations. The lab never imports ``kernel`` or ``router``: it
observes the code under test independently.
"""
