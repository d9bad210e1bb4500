"""``EGRESS_DESTINATION_FILE`` as the waiting process watches it: polled, not inotify-watched.

The kubelet updates a mounted ConfigMap by writing a new timestamped directory and swapping
the ``..data`` symlink, so the file's inode changes and an inotify watch on it would go
stale. The file is polled by device, inode, size and modification time (one ``stat``), and
read only when those moved; the text's digest then says whether the rules changed at all
(a touched file, or the kubelet's periodic re-sync, applies nothing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from egress_router.core import config, digest
from egress_router.kernel import files

Source = tuple[int, int, int, int]  # device, inode, size, modification time


class DestinationFile:
    """The destination file of the environment ``env()`` gives (none: rules in the environment)."""

    def __init__(
        self,
        env: Callable[[], Mapping[str, str]],
        reread: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._env = env
        # CNI mode: the file is the plugin's configuration (EGRESS_ROUTER_CNI_CONFIG) and
        # ``reread`` completes the environment from it afresh; only its rules may change.
        self._reread = reread
        self._source: Source | None = None
        self._digest: str | None = None

    @property
    def path(self) -> str | None:
        variable = config.ENV_DESTINATION_FILE if self._reread is None else config.ENV_CNI_CONFIG
        return self._env().get(variable, "").strip() or None

    @staticmethod
    def _stat(path: str) -> Source | None:
        try:
            st = os.stat(path)  # follows the ConfigMap's ..data symlink
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> str:
        if self._reread is not None:
            env, fresh = self._env(), self._reread()
            changed = sorted(
                name for name in set(fresh) | set(env)
                if name != config.ENV_DESTINATION and fresh.get(name) != env.get(name)
            )
            if changed:
                raise config.ConfigError(
                    config.ENV_CNI_CONFIG,
                    f"{self.path} changed more than the rules ({', '.join(changed)}); "
                    "only the rules are reloaded: restart the pod for the rest",
                )
            return fresh.get(config.ENV_DESTINATION, "")
        _variable, text = files.read_destination_text(self._env())
        return text

    def first(self) -> str | None:
        """The text at start (None: no file); `config.ConfigError` when it cannot be read."""
        if self.path is None:
            return None
        self._source = self._stat(self.path)
        text = self._read()
        self._digest = digest.sha256_hex(text.encode())
        return text

    def changed(self) -> str | None:
        """The new text if the file's content changed since the last look, else None.

        Raises `config.ConfigError` when the changed file cannot be read (each change is
        reported once: the same unreadable file is not read again at every poll).
        """
        if self.path is None:
            return None
        source = self._stat(self.path)
        if source == self._source:
            return None
        self._source = source
        text = self._read()
        text_digest = digest.sha256_hex(text.encode())
        if text_digest == self._digest:
            return None
        self._digest = text_digest
        return text
