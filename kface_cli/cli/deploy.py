"""The deployment commands: ``enroll``, ``identify``, ``gallery``, and one photo at a time: ``verify``, ``embed``, ``detect``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from kface_cli import console
from kface_cli.choices import (
    IndexKind,
    LandmarkMode,
    PerIdentity,
)
from kface_cli.cli.common import (
    AlignedOpt,
    EmbedBatchOpt,
    GalleryOpt,
    JsonOpt,
    LandmarksOpt,
    ModelOpt,
    NetworkOpt,
    TrustModelOpt,
    WorkdirOpt,
    command,
    deprecated,
    one_blas_thread,
)
from kface_cli.defaults import (
    AUTO_FLAT_MAX,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLD_COSINE,
    DEFAULT_TOP_K,
    EMBED_BATCH_SIZE,
    ENROLL_BATCH_SIZE,
)

# ============================================================================================
# Gallery: enroll, identify, gallery
# ============================================================================================

MinFaceOpt = Annotated[
    int | None,
    typer.Option(
        "--min-face",
        help="Smallest face to look for, in pixels (default: the detector's, which also searches zoomed tiles for small faces); e.g. 64 for webcam frames is several times faster.",
        show_default=False,
    ),
]
IndexOpt = Annotated[
    IndexKind,
    typer.Option(
        "--index",
        case_sensitive=False,
        help=f"Search index kind: auto (exact up to {AUTO_FLAT_MAX:,} templates, then IVF), flat (exact), ivf, hnsw; built when the saved one differs.",
    ),
]


def _gallery_path(gallery: Path | None, workdir: Path | None) -> Path:
    from kface_cli.workspace import Workspace

    return gallery if gallery is not None else Workspace.resolve(workdir).gallery


FolderOpt = Annotated[
    Path | None,
    typer.Argument(
        help='Photos of known people: DIR/<name>.jpg (one each) and/or DIR/<name>/*.jpg (several), as `kface crop` reads them; "unknown" is no name.',
        show_default=False,
    ),
]
EmbeddingsOpt = Annotated[
    Path | None,
    typer.Option(
        "--embeddings",
        help="Enrol precomputed embeddings instead of photos: the FILE.h5 `kface embed --out` writes (its model must be the gallery's).",
        show_default=False,
    ),
]
NamesFromOpt = Annotated[
    str,
    typer.Option(
        "--names-from",
        help="With --embeddings: identity names from each entry's text (entry), its photo's folder (folder) or file stem (stem); auto: folder when every entry is a path, else entry.",
    ),
]
PerIdentityOpt = Annotated[
    PerIdentity,
    typer.Option(
        "--per-identity",
        case_sensitive=False,
        help="Templates kept per person: all (one per photo) or mean (one averaged template).",
    ),
]
ReplaceOpt = Annotated[
    bool,
    typer.Option(
        "--replace",
        help="Swap the templates of every person in DIR for the new ones, in one transaction (a person none of whose new photos has a face keeps the old ones).",
    ),
]
CommitEveryOpt = Annotated[
    int,
    typer.Option(
        "--commit-every",
        help="Photos embedded and saved together (an interrupted run keeps every saved batch).",
        min=1,
    ),
]
BatchSizeDeprecatedOpt = Annotated[
    int | None, typer.Option("--batch-size", hidden=True, help="Deprecated: --commit-every.", show_default=False)
]


@command("enroll")
def enroll_cmd(
    folder: FolderOpt = None,
    gallery: GalleryOpt = None,
    model: ModelOpt = None,
    network: NetworkOpt = None,
    trust_model: TrustModelOpt = False,
    embeddings: EmbeddingsOpt = None,
    names_from: NamesFromOpt = "auto",
    aligned: AlignedOpt = False,
    per_identity: PerIdentityOpt = PerIdentity.ALL,
    replace: ReplaceOpt = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    commit_every: CommitEveryOpt = ENROLL_BATCH_SIZE,
    batch_size_deprecated: BatchSizeDeprecatedOpt = None,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Add the faces of known people to the gallery, from photos or precomputed embeddings (re-enrolling is a no-op)."""
    from kface_cli.deploy.enroll import enroll_folder, summary_rows
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.errors import InputError
    from kface_cli.workspace import Workspace

    ws = Workspace.resolve(workdir)
    if embeddings is not None:
        if folder is not None:
            raise InputError("pass either a folder of photos or --embeddings FILE.h5, not both")
        _enroll_embeddings(
            embeddings,
            _gallery_path(gallery, workdir),
            model,
            network,
            ws.root,
            names_from,
            commit_every,
            json_output,
            trust_model=trust_model,
        )
        return
    if folder is None:
        raise InputError("nothing to enroll", hint="Pass a folder of photos, or --embeddings FILE.h5.")
    result = enroll_folder(
        folder,
        _gallery_path(gallery, workdir),
        lambda: load_embedder(model, workdir=ws.root, network=network, trust_model=trust_model),
        aligned=aligned,
        per_identity=per_identity,
        replace=replace,
        landmarks=landmarks,
        min_face=min_face,
        batch_size=deprecated("--batch-size", "--commit-every", batch_size_deprecated, commit_every),
    )
    if json_output:
        console.print_json(result.to_json())
        return
    columns, rows = summary_rows(result)
    data_columns = ["name", "photos", "added", "duplicates", "skipped", "templates"]
    data = [[i.name, i.photos, i.added, i.duplicates, i.skipped, i.templates] for i in result.identities]
    console.show(console.table(f"Enrolled into {result.gallery}", columns, rows, data=(data_columns, data)))
    t = result.totals()
    removed = f", {t['templates_removed']} replaced" if t["templates_removed"] else ""
    console.info(
        f"{t['templates_added']} templates added{removed} from {t['photos']} photos in {result.seconds:.1f} s "
        f"({result.photos_per_second:.1f} photos/s); model {result.model.get('network')} {str(result.model.get('fingerprint'))[:12]}"
    )


def _enroll_embeddings(
    file: Path,
    gallery: Path,
    model,
    network,
    root,
    names_from: str,
    commit_every: int,
    json_output: bool,
    *,
    trust_model: bool = False,
) -> None:
    from kface_cli.deploy.bulk import NamesFrom, enroll_embeddings
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.errors import InputError

    try:
        mode = NamesFrom(names_from.lower())
    except ValueError:
        raise InputError(f"--names-from must be auto, entry, folder or stem, got {names_from!r}") from None
    result = enroll_embeddings(
        file,
        gallery,
        names_from=mode,
        embedder=(lambda: load_embedder(model, workdir=root, network=network, trust_model=trust_model))
        if model is not None
        else None,
        batch_rows=max(commit_every, 1024),
    )
    if json_output:
        console.print_json(result.to_json())
        return
    console.info(
        f"{result.added:,} templates added ({result.duplicates:,} already there) for {result.identities:,} identities "
        f"from {result.file} in {result.seconds:.1f} s"
        + (f" (+{result.index_seconds:.1f} s building the search index)" if result.index_seconds >= 0.05 else "")
        + f"; {result.templates:,} templates in {result.gallery}; "
        f"model {result.model['network'] or '?'} {result.model['fingerprint'][:12]}"
    )


PathsOpt = Annotated[
    list[Path] | None, typer.Argument(help="Photos, folders of photos, or video files.", show_default=False)
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        "-t",
        help=f"Squared L2 distance (2 - 2 cos) below which a face is named \\[default: the model's calibrated 1:N threshold, else its 1:1 one, else {DEFAULT_THRESHOLD:g} = cosine {DEFAULT_THRESHOLD_COSINE:g}].",
        show_default=False,
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", "-k", help="Identities listed per face (the best and the next candidates).")
]
EveryOpt = Annotated[int, typer.Option("--every", help="Videos and camera: use one frame in N.")]
CameraOpt = Annotated[
    int | None,
    typer.Option(
        "--camera", help="Read frames from this webcam (e.g. 0) until Ctrl-C or --max-frames.", show_default=False
    ),
]
MaxFramesOpt = Annotated[
    int | None,
    typer.Option("--max-frames", help="Stop after this many frames (camera or videos).", show_default=False),
]
CsvPathOpt = Annotated[
    Path | None, typer.Option("--csv", help="Also write one row per face to this CSV file.", show_default=False)
]
AnnotateOpt = Annotated[
    Path | None,
    typer.Option(
        "--annotate",
        help="Write copies of the images with boxes and names drawn into this folder.",
        show_default=False,
    ),
]
FailUnknownOpt = Annotated[
    bool, typer.Option("--fail-unknown", help="Exit with code 1 when no face matched anyone in the gallery.")
]


@command("identify")
def identify_cmd(
    paths: PathsOpt = None,
    gallery: GalleryOpt = None,
    model: ModelOpt = None,
    network: NetworkOpt = None,
    trust_model: TrustModelOpt = False,
    threshold: ThresholdOpt = None,
    top_k: TopKOpt = DEFAULT_TOP_K,
    every: EveryOpt = 1,
    camera: CameraOpt = None,
    max_frames: MaxFramesOpt = None,
    aligned: AlignedOpt = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    index: IndexOpt = IndexKind.AUTO,
    csv_path: CsvPathOpt = None,
    annotate: AnnotateOpt = None,
    fail_unknown: FailUnknownOpt = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Name the faces in photos, videos or a webcam (exit 0; 1 with --fail-unknown when nobody matched; 2 on errors)."""
    with one_blas_thread():
        from kface_cli.deploy.identify import identify, table_rows, write_csv
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.errors import InputError
    from kface_cli.workspace import Workspace

    if camera is None and not paths:
        raise InputError("nothing to identify", hint="Pass photos, folders or videos, or --camera 0.")
    if camera is not None and paths:
        raise InputError("pass either photos/videos or --camera, not both")
    if csv_path is not None and csv_path.is_dir():  # checked before the work, not after it
        raise InputError(f"--csv must be a file, got a folder: {csv_path}", hint="Pass e.g. --csv results.csv.")
    if csv_path is not None:
        from kface_cli.atomic import check_output

        check_output(csv_path, inputs=[_gallery_path(gallery, workdir), model, *(paths or [])], option="--csv")
    ws = Workspace.resolve(workdir)
    result = identify(
        paths or [],
        _gallery_path(gallery, workdir),
        lambda: load_embedder(model, workdir=ws.root, network=network, trust_model=trust_model),
        threshold=threshold,
        top_k=top_k,
        every=every,
        camera=camera,
        max_frames=max_frames,
        aligned=aligned,
        landmarks=landmarks,
        min_face=min_face,
        index_kind=index,
        annotate=annotate,
    )
    if csv_path is not None:
        write_csv(result, csv_path)
    if json_output:
        console.print_json(result.to_json())
    else:
        columns, rows = table_rows(result)
        from kface_cli.dataset.provenance import title_note
        from kface_cli.deploy.model import UNCALIBRATED, uncalibrated_hint

        console.show(
            console.table(
                f"Faces (threshold {result.threshold:.3f}: {result.threshold_detail}){title_note(result.warnings)}",
                columns,
                rows,
                data=result.data(),
            )
        )
        if result.threshold_source == UNCALIBRATED:
            console.info(f"hint: {uncalibrated_hint(model)}")
        named = sum(1 for i in result.images for f in i.faces if f.name != "unknown")
        console.info(
            f"{result.faces} faces in {len(result.images)} images, {named} named, in {result.seconds:.2f} s; "
            f"index {result.index['kind']} over {result.index['templates']:,} templates"
            + (f"; annotated images in {annotate}" if annotate is not None else "")
        )
    if (fail_unknown and not result.matched_any()) or _none_readable(result.images):
        raise typer.Exit(1)


@command("gallery")
def gallery_cmd(
    gallery: GalleryOpt = None,
    remove: Annotated[
        list[str] | None,
        typer.Option("--remove", help="Remove every template of this person (repeatable).", show_default=False),
    ] = None,
    rebuild_index: Annotated[
        bool,
        typer.Option(
            "--rebuild-index", help="Rebuild the search index now (it is also rebuilt automatically when stale)."
        ),
    ] = False,
    index: IndexOpt = IndexKind.AUTO,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Verify every name and embedding against the digest written with them (reads the whole file).",
        ),
    ] = False,
    upgrade: Annotated[
        bool,
        typer.Option(
            "--upgrade",
            help="Convert an older (schema 1) gallery to the current format and sign it; the original is kept beside it.",
        ),
    ] = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Show the gallery: its facts and identities with template counts; remove people; rebuild the index; check or upgrade it."""
    from kface_cli.gallery.manage import facts_rows, manage_gallery

    report = manage_gallery(
        _gallery_path(gallery, workdir),
        remove=remove or [],
        rebuild_index=rebuild_index,
        index_kind=index,
        check=check,
        upgrade=upgrade,
    )
    if json_output:
        console.print_json(report)
        return
    if "upgrade" in report:
        u = report["upgrade"]
        console.info(
            f"upgraded {report['facts']['path']} from schema {u['from_schema']} to {u['schema_version']} "
            f"({u['templates']:,} templates, {u['bytes_before'] / 2**20:.1f} -> {u['file_bytes'] / 2**20:.1f} MiB"
            + ("" if u["had_digest"] else "; it had no digest: signed as it was")
            + f"); the original is kept as {u['backup']}"
            if u["upgraded"]
            else f"{report['facts']['path']} already has the current format (schema {u['schema_version']}): nothing to do"
        )
    for removed in report["removed"]:
        console.info(f"removed {removed['templates']} templates of {removed['name']}")
    if "check" in report:
        c = report["check"]
        console.info(f"checked {c['rows_checked']:,} of {c['templates']:,} templates, the model and the schema: intact")
    if report["index"].get("rebuilt"):
        console.info(f"rebuilt the {report['index']['kind']} search index over {report['index']['count']:,} templates")
    facts = report["facts"]
    console.show(
        console.table(
            f"Gallery {facts['path']}",
            ["fact", "value"],
            facts_rows(facts),
            justify_numbers=False,
        ),
        secondary=True,  # --format csv: the identities, one row each
    )
    identities = [[i["name"], i["templates"]] for i in report["identities"]]
    console.show(
        console.table("Identities", ["identity", "templates"], identities, data=(["name", "templates"], identities))
    )


# ============================================================================================
# One photo at a time: verify, embed, detect
# ============================================================================================

PhotosArg = Annotated[list[Path], typer.Argument(help="Photos, or folders of photos.", show_default=False)]


def _model_row(model: dict) -> list[str]:
    return ["model", f"{model.get('network')} {model.get('fingerprint')}"]


def _model_loader(model: str | None, network: str | None, workdir: Path | None, trust_model: bool = False) -> Callable:
    """Loads the model when the domain function asks (after it has checked its inputs)."""
    from kface_cli.embedding.loading import load_embedder
    from kface_cli.workspace import Workspace

    root = Workspace.resolve(workdir).root
    return lambda: load_embedder(model, workdir=root, network=network, trust_model=trust_model)


@command("verify")
def verify_cmd(
    image1: Annotated[Path, typer.Argument(help="First photo (its largest face is used).", show_default=False)],
    image2: Annotated[Path, typer.Argument(help="Second photo.", show_default=False)],
    model: ModelOpt = None,
    network: NetworkOpt = None,
    trust_model: TrustModelOpt = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            "-t",
            help=f"Squared L2 distance (2 - 2 cos) below which the two are the same person \\[default: the model's calibrated 1:1 threshold, else {DEFAULT_THRESHOLD:g} = cosine {DEFAULT_THRESHOLD_COSINE:g}].",
            show_default=False,
        ),
    ] = None,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    aligned: AlignedOpt = False,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Are two photos the same person? Distance and verdict at the model's threshold (exit 0 same, 1 different, 2 error)."""
    with one_blas_thread():
        from kface_cli.deploy.compare import verify_photos

    loader = _model_loader(model, network, workdir, trust_model)
    result = verify_photos(image1, image2, loader, threshold=threshold, landmarks=landmarks, aligned=aligned or None)
    if json_output:
        console.print_json(result.to_json())
    else:
        rows = [
            ["photo 1", console.display_path(result.image1)],
            ["photo 2", console.display_path(result.image2)],
            ["verdict", Text("same person", "green") if result.same else Text("different people", "yellow")],
            ["distance", f"{result.distance:.4f} (cosine {result.cosine:.4f})"],
            ["threshold", f"{result.threshold:.4f} ({result.threshold_detail or result.threshold_source})"],
        ]
        rows += [[f"face used {k}", f.describe()] for k, f in ((1, result.face1), (2, result.face2)) if f is not None]
        rows.append(_model_row(result.model))
        from kface_cli.dataset.provenance import title_note
        from kface_cli.deploy.model import UNCALIBRATED, uncalibrated_hint

        uncalibrated = result.threshold_source == UNCALIBRATED
        title = "Verification" + (" (threshold NOT calibrated for this model)" if uncalibrated else "")
        console.show(
            console.table(
                title + title_note(result.warnings), ["field", "value"], rows, justify_numbers=False, data=result.data()
            )
        )
        if uncalibrated:
            console.info(f"hint: {uncalibrated_hint(model)}")
    if not result.same:
        raise typer.Exit(1)


@command("embed")
def embed_cmd(
    paths: PhotosArg,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Embeddings file: FILE.npy (rows in the order of FILE.names.txt; photo and box of each row in FILE.faces.csv) or FILE.h5 (HDF5: embeddings, names, boxes, faces, scores).",
            show_default=False,
        ),
    ],
    model: ModelOpt = None,
    network: NetworkOpt = None,
    all_faces: Annotated[
        bool,
        typer.Option(
            "--all-faces",
            help="One row per face of every photo (with its box), not only the largest face of each.",
        ),
    ] = False,
    trust_model: TrustModelOpt = False,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    aligned: AlignedOpt = False,
    embed_batch: EmbedBatchOpt = EMBED_BATCH_SIZE,
    json_output: JsonOpt = False,
    workdir: WorkdirOpt = None,
) -> None:
    """Write a unit-length embedding of each photo's largest face (or of every face: --all-faces), with its photo and box, to .npy or HDF5."""
    from kface_cli.deploy.compare import embed_photos

    loader = _model_loader(model, network, workdir, trust_model)
    result = embed_photos(
        paths,
        loader,
        out,
        landmarks=landmarks,
        batch_size=embed_batch,
        all_faces=all_faces,
        aligned=aligned or None,
    )
    if json_output:
        console.print_json(result.to_json())
        return
    photos = len({f.image for f in result.faces})
    rows = [
        ["file", result.out],
        ["names", result.names_file if result.names_file else "inside the file (dataset 'names')"],
        ["faces", result.faces_file if result.faces_file else "inside the file (datasets 'boxes', 'faces', 'scores')"],
        ["rows", f"{len(result.faces)} x {result.embedding_size} float32, unit length"],
        ["faces per photo", "every face" if result.all_faces else "the largest"],
        ["no face (left out)", str(len(result.failed))],
        _model_row(result.model),
    ]
    console.show(console.table("Embeddings", ["field", "value"], rows, justify_numbers=False, data=result.data()))
    console.info(f"{len(result.faces)} faces of {photos} photos embedded in {result.seconds:.1f} s")


@command("detect")
def detect_cmd(
    paths: PhotosArg,
    landmarks: LandmarksOpt = LandmarkMode.AUTO,
    min_face: MinFaceOpt = None,
    annotate: Annotated[
        Path | None,
        typer.Option(
            "--annotate",
            help="Write copies of the photos with boxes, the 5 points and scores drawn into this folder.",
            show_default=False,
        ),
    ] = None,
    aligned: AlignedOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Find the faces in photos: box, 5 landmarks (eyes, nose, mouth corners) and score of each."""
    with one_blas_thread():
        from kface_cli.deploy.detect import detect_photos, table_rows

    result = detect_photos(paths, landmarks=landmarks, min_face=min_face, annotate=annotate, aligned=aligned or None)
    if json_output:
        console.print_json(result.to_json())
    else:
        columns, rows = table_rows(result)
        console.show(console.table(f"Faces in {len(result.images)} photos", columns, rows, data=result.data()))
        console.info(
            f"{result.faces} faces in {len(result.images)} photos in {result.seconds:.2f} s"
            + (f"; annotated photos in {annotate}" if annotate is not None else "")
        )
    if _none_readable(result.images):
        raise typer.Exit(1)


def _none_readable(images: list) -> bool:
    """Whether every input photo failed to load (each already reported): the command exits 1."""
    return bool(images) and all(img.error for img in images)
