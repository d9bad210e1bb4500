"""The pure core: what the router wants, computed from its configuration.

``config`` parses every variable into frozen values (or a ``ConfigError``), ``plan`` turns them
into interface steps, ``ruleset`` into the nftables transaction and the iptables payloads.
``listing`` is the one parser of what nft, iptables-save and ``ip -j`` print, ``state`` the one
model of what a namespace holds (`Snapshot`), ``drift`` the one comparison of the two that
``wait``, ``status`` and CNI CHECK share. Nothing
here spawns a process, opens a socket or reads the kernel: the import contract in
``pyproject.toml`` keeps it so, which is what makes this layer testable with plain values.
"""
