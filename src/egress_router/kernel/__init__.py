"""The kernel edge: the only code that spawns processes, opens sockets or reads ``/proc``.

``nft`` and ``iptables`` apply the rulesets the core renders, ``netlink`` carries out the
interface plan, ``observe`` reads the kernel's state back, ``conntrack`` counts and cuts flows,
``announce`` sends gratuitous ARP / unsolicited NA, ``netns`` enters a pod's namespace. The edges
the router drives (nft, iptables, netlink, conntrack, announce) are each a ``typing.Protocol``
with a real implementation and a Fake (knftables' Interface/Fake); all of them fail with one
family, ``errors.KernelError`` and its kinds. Everything above this layer talks to
the kernel through these modules, so a test can swap them for fakes.
"""
