"""``mydocker-runc``: an OCI runtime (runc's command line over OCI bundles) on the
same engine as ``mydocker run``.

An OCI ``config.json`` is one more way to describe a container: ``config.py`` turns
it into a ``ContainerSpec`` (with ``ContainerSpec.oci`` for what docker's flags do
not say), and the container is made by the same pieces as mydocker's own: the child
stage (``init.py``), the clone (``_linux.clone3``), the mount steps (``mounts.py``),
the confinement (``capabilities.py``, ``seccomp.py``, ``devices.py``) and the cgroup
layout and limits (``cgroups.py``). What is OCI's own:

    config.py   config.json -> ContainerSpec + OciSettings; every field checked, the
                unsupported ones refused in one line (pure: unit-tested without root)
    fs.py       the child's root filesystem steps for a bundle (mounts.py's functions)
    cgroup.py   a cgroup at the config's cgroupsPath that outlives the runtime process
    records.py  the state directory under --root: one directory per container
    hooks.py    the hooks, with the state on their stdin
    create.py   create, start, exec and run: the clone and its handshakes
    runtime.py  the command line (runc's flags and commands), errors and logging

Why no event loop: every command is one short sequence of blocking steps in a
process that then exits, and the container must outlive it (``create`` leaves it to
the caller's subreaper, as runc does), so anyio, the spawn helper and the async
``Container`` would only add start-up time (anyio alone is ~15 ms of imports).
Nothing here is imported by mydocker's own paths.
"""
