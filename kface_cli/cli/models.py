"""``kface models list | get | remove``: pretrained model packs (:mod:`kface_cli.hub`)."""

from __future__ import annotations

from typing import Annotated

import typer

from kface_cli import console
from kface_cli.cli.common import JsonOpt, app, command

models_app = typer.Typer(
    help="Pretrained model packs: list the known ones, fetch one (checksummed, atomic), remove one. Cache: $KFACE_HOME.",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _mib(n: int | None) -> str:
    return f"{n / 2**20:.0f} MB" if n else ""


@command("list", group=models_app)
def models_list_cmd(json_output: JsonOpt = False) -> None:
    """Known packs (what is inside, size, licence, cached or not) and the packs already fetched."""
    from kface_cli.hub.cache import catalog

    result = catalog()
    if json_output:
        console.print_json(result)
        return
    rows = [
        [
            p["name"],
            p["recognition"] + (f"; {p['contents']}" if p["contents"] and p["contents"] != "-" else ""),
            _mib(p["bytes"]) if p["cached"] else (p["size"] or ""),
            p["licence"] or "",
            "yes" if p["cached"] else "no",
            p["sha256"] or "",
        ]
        for p in result["packs"]
    ]
    console.show(
        console.table(
            f"Model packs (cache {result['models']})",
            ["name", "inside", "size", "licence", "cached", "sha256"],
            rows,
            justify_numbers=False,
        )
    )
    console.info("Fetch one: `kface models get NAME --accept-licence`; use it: `kface identify PHOTO --model NAME`.")


@command("get", group=models_app)
def models_get_cmd(
    source: Annotated[
        str, typer.Argument(help="A known pack's name, an http(s) URL, or a .zip/.onnx file.", metavar="NAME|URL|FILE")
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Keep it under this name [default: the pack's name or the file name].", show_default=False
        ),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256", help="Expected SHA-256 of the download (hex); checked before unpacking.", show_default=False
        ),
    ] = None,
    accept_licence: Annotated[
        bool,
        typer.Option(
            "--accept-licence", help="Accept the pack's licence (insightface's: non-commercial research use only)."
        ),
    ] = False,
    json_output: JsonOpt = False,
) -> None:
    """Fetch a pretrained pack into the cache: download, verify its SHA-256, unpack safely, find its recognition model."""
    from kface_cli.hub.fetch import fetch_pack, interactive

    result = fetch_pack(
        source,
        name=name,
        sha256=sha256,
        accept_licence=accept_licence,
        confirm=(lambda q: typer.confirm(q, default=False, err=True)) if interactive() else None,
    )
    if json_output:
        console.print_json(result.to_json())
        return
    m = result.manifest
    rec = m["recognition"]
    rows = [
        ["name", result.name],
        ["status", result.status],
        ["path", str(result.path)],
        ["source", m.get("source")],
        ["sha256", f"{m.get('sha256')} ({m.get('sha256_checked')})"],
        ["licence", m.get("licence")],
        ["recognition model", f"{rec['file']}: input {rec['inputs'][0]}, {rec['embedding_size']}-d embedding"],
        ["other models (unused)", ", ".join(o["file"] for o in m.get("other_models", [])) or "none"],
    ]
    console.show(console.table(f"Pack {result.name}", ["field", "value"], rows, justify_numbers=False))
    console.info(
        f"Use it: `kface enroll PEOPLE --model {result.name}`, `kface identify PHOTO --model {result.name}`. "
        f"Its threshold is not calibrated: run `kface evaluate --model {result.name} --target-far 1e-3 --save-threshold` on labelled photos."
    )


@command("remove", group=models_app)
def models_remove_cmd(
    name: Annotated[str, typer.Argument(help="The fetched pack's name (`kface models list`).", show_default=False)],
    json_output: JsonOpt = False,
) -> None:
    """Forget a fetched pack: its folder under $KFACE_HOME is deleted."""
    from kface_cli.hub.cache import remove_pack

    pack = remove_pack(name)
    if json_output:
        console.print_json({"name": pack.name, "path": pack.path, "removed": True})
        return
    console.info(f"removed pack {pack.name} ({pack.path})")
