"""The Kubernetes wing: one render config (or an EgressRouter CR) -> a spec -> the objects.

``manifest`` turns the admin's config into a validated spec and the objects (Deployment,
Service, ConfigMap, NetworkAttachmentDefinition, ...); ``render`` writes them and checks them
offline against the Kubernetes schemas. Pure: nothing here talks to a cluster or the kernel.
"""
