"""``mydocker image``: import, list and remove root filesystem images."""

from __future__ import annotations

import sys
from typing import Any

import click


@click.group(short_help="Import, list and remove images.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="Images and layers (default: $MYDOCKER_STATE_DIR or /var/lib/mydocker).",
)
@click.pass_context
def image(ctx: click.Context, state_dir: str | None) -> None:
    """Root filesystem images: `mydocker run --image NAME COMMAND` runs one.

    A busybox image to start with: scripts/busybox-image.sh DIR busybox.tar, then
    `mydocker image import busybox busybox.tar`.
    """
    from ..state import state_dir as resolve_state_dir

    ctx.obj = resolve_state_dir(state_dir)


@image.command("import")
@click.option(
    "--allow-devices", is_flag=True, help="Create device nodes found in the tarball (default: skip them)."
)
@click.option(
    "--max-size",
    default="10g",
    metavar="SIZE",
    help="Refuse a tarball whose files add up to more than SIZE, sparse holes included (default: 10g).",
)
@click.option(
    "--max-members",
    default=1_000_000,
    type=click.IntRange(min=1),
    metavar="N",
    help="Refuse a tarball of more than N files, directories and links (default: 1000000).",
)
@click.argument("name")
@click.argument("tarball")
@click.pass_obj
def image_import(
    state_dir: str, allow_devices: bool, max_size: str, max_members: int, name: str, tarball: str
) -> None:
    """Unpack TARBALL (a root filesystem; '-' reads stdin) as image NAME."""
    from ..errors import SpecError
    from ..images import import_image
    from ..spec import parse_size

    limit = parse_size(max_size, "--max-size")
    if limit <= 0:
        raise SpecError(f"invalid --max-size {max_size!r} (it must be positive)")
    source: Any = sys.stdin.buffer if tarball == "-" else tarball
    img = import_image(
        name, source, state_dir, allow_devices=allow_devices, max_size=limit, max_members=max_members
    )
    note = f" ({img.skipped} device nodes or special files skipped)" if img.skipped else ""
    click.echo(f"{img.name}{note}")


@image.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.pass_obj
def image_ls(state_dir: str, quiet: bool) -> None:
    """List the imported images."""
    import time

    from ..images import list_images

    images = list_images(state_dir)
    if quiet:
        for img in images:
            click.echo(img.name)
        return
    click.echo(f"{'NAME':<24} {'CREATED':<20} {'SIZE':>10}")
    for img in images:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(img.created))
        click.echo(f"{img.name:<24} {created:<20} {img.size / 1e6:>8.1f}MB")


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def image_rm(state_dir: str, names: tuple[str, ...]) -> None:
    """Remove images."""
    from ..images import remove_image

    for name in names:
        remove_image(name, state_dir)
        click.echo(name)
