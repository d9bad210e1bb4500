"""The router: orchestration of the core's wishes through the kernel edge.

``engine`` is the one-shot setup (the init container, CNI ADD); ``reconciler`` is what the
long-running ``wait`` process decides (reload, repair, DNS refresh, readiness); ``resolve``
follows DNS-name destinations; ``metrics`` exports what the reconciler did. The commands above
(``cli``, ``wait``, ``status``) only parse arguments and map outcomes to exit codes.
"""
