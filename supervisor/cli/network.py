"""``mydocker network``: create, list, inspect and remove bridge networks."""

from __future__ import annotations

import click


@click.group(short_help="Create, list, inspect and remove networks.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Where networks are recorded (default: $MYDOCKER_STATE_DIR or /var/lib/mydocker).",
)
@click.pass_context
def network(ctx: click.Context, state_dir: str | None) -> None:
    """Bridge networks: `mydocker run --network NAME COMMAND` puts a container on one.

    Containers on one network reach each other by address and by name; their
    traffic out is masqueraded; `-p` publishes their ports on the host.
    """
    from ..state import state_dir as resolve_state_dir

    ctx.obj = resolve_state_dir(state_dir)


@network.command("create")
@click.option(
    "--subnet", metavar="CIDR", help="The subnet, e.g. 172.18.0.0/24 (default: a free private /24)."
)
@click.option("--gateway", metavar="IP", help="The bridge's address in the subnet (default: its first).")
@click.argument("name")
@click.pass_obj
def network_create(state_dir: str, subnet: str | None, gateway: str | None, name: str) -> None:
    """Create network NAME (its bridge is myd-NAME); print its id."""
    from ..network import create_network

    net = create_network(name, subnet=subnet, gateway=gateway, state_dir=state_dir)
    click.echo(net.id)


@network.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.pass_obj
def network_ls(state_dir: str, quiet: bool) -> None:
    """List the networks."""
    from ..network import list_networks

    nets = list_networks(state_dir)
    if quiet:
        for net in nets:
            click.echo(net.name)
        return
    click.echo(f"{'NETWORK ID':<14} {'NAME':<12} {'DRIVER':<8} {'BRIDGE':<16} {'SUBNET':<19} GATEWAY")
    for net in nets:
        click.echo(
            f"{net.id[:12]:<14} {net.name:<12} {'bridge':<8} {net.bridge:<16} {net.subnet:<19} {net.gateway}"
        )


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def network_inspect(state_dir: str, names: tuple[str, ...]) -> None:
    """Show networks as JSON (a list, as docker prints it)."""
    import json

    from ..network import inspect_network

    click.echo(json.dumps([inspect_network(name, state_dir) for name in names], indent=4))


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def network_rm(state_dir: str, names: tuple[str, ...]) -> None:
    """Remove networks (refused while a running container is on one)."""
    from ..network import remove_network

    for name in names:
        remove_network(name, state_dir)
        click.echo(name)
