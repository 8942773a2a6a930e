"""The daemon: one async supervisor per state directory, the parent of every detached
container (``mydocker run -d``).

- ``protocol.py``: the wire format between the CLI and the daemon (JSON lines, versioned)
  and where the daemon's files live;
- ``server.py``: the daemon itself (one event loop: it starts detached containers through
  its spawn helper, pumps their output into their logs, records each exit, and exits
  once idle);
- ``client.py``: the CLI's side (connect, start the daemon on demand, one request).

Everything else about a container (``ps``, ``logs``, ``stop``, ``exec``, ``rm``...) the
CLI does itself from the records on disk (``records.py``), so those work whether or
not a daemon runs.
"""
