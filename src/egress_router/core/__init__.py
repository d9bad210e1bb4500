"""The pure core: what the router wants, computed from its configuration.

``config`` parses every variable into frozen values (or a ``ConfigError``), ``plan`` turns them
into interface steps, ``ruleset`` into the nftables transaction and the iptables payloads. Nothing
here spawns a process, opens a socket or reads the kernel: the import contract in
``pyproject.toml`` keeps it so, which is what makes this layer testable with plain values.
"""
