"""The proxy pods' main containers: squid (HTTP proxy mode) and HAProxy (DNS proxy mode).

A wing beside the commands. ``core.proxy_http`` and ``core.proxy_dns`` parse upstream's
variables and render the proxies' configuration (pure); the modules here run the proxy as a
child process and serve probes and metrics for it (``supervise``).
"""
