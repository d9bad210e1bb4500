"""``egress-router operator``: EgressRouters reconciled as OpenShift's network operator does.

A wing beside the commands: it talks to the Kubernetes API only (no kernel, no router). The pure
half decides — `desired` (the resource -> the objects `render --from-egressrouter` gives, owned by
it), `diff` (whether an object in the cluster already holds what is desired, and the body that
puts it back), `conditions` (Available, Progressing, Degraded), `backoff` (how long a failing
resource waits) — and the edge acts: `api` (the requests, every write counted), `controller`
(watches, the work queue, resync, one reconcile per resource at a time), `election` (one writer
among the replicas, by a Lease), `command` (the click command).
"""
