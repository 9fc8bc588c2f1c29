"""K-Face codes: accessories (S), lights (L), expressions (E), cameras (C), and identity IDs.

Every K-Face image is named by four codes plus the identity: inside an identity's zip the member
``S001/L1/E01/C7.jpg`` is accessory S001 (none), light L1 (1000 lux, every lamp), expression E01
(neutral), camera C7 (frontal). kface names a cropped face ``<ID>_<S>_<L>_<E>_<C>.jpg``.

Users pass selections on the command line as lists and ranges; :func:`parse_selection` accepts
``L1,L3``, ``C6-C9``, ``E01-E03``, ``l1, l3``, ``C6-9``, ``all`` and mixes (``C1,C6-C9,C13``), and
rejects anything else with a message that names the valid range::

    >>> parse_selection("light", "L1,L3")
    ('L1', 'L3')
    >>> parse_selection("cam", "C6-C9")
    ('C6', 'C7', 'C8', 'C9')
    >>> parse_selection("light", "L31")
    Traceback (most recent call last):
    ...
    kface_cli.errors.CodeError: L31 is not a K-Face light (L1-L30)

Code tables (:data:`ACCESSORIES`, :data:`LIGHTS`, :data:`EXPRESSIONS`, :data:`CAMERAS`) map each
code to a small record with a human description, for tables and per-condition reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kface_cli.errors import CodeError

#: The four code kinds, in file-name order. Keys of the ``codes`` dicts used across kface.
CODE_KINDS: tuple[str, ...] = ("acc", "light", "expr", "cam")


@dataclass(frozen=True)
class Accessory:
    code: str
    description: str


@dataclass(frozen=True)
class Light:
    code: str
    lux: int
    #: Where the light comes from: "all" (every lamp), "vertical" or "horizontal".
    axis: str
    #: Direction in degrees along ``axis`` (0 for "all").
    angle: int

    @property
    def description(self) -> str:
        if self.axis == "all":
            return f"{self.lux} lux, all lamps" + (" (dark)" if self.lux == 0 else "")
        return f"{self.lux} lux from {self.angle:+d} deg {self.axis}"


@dataclass(frozen=True)
class Expression:
    code: str
    description: str


@dataclass(frozen=True)
class Camera:
    code: str
    #: Camera elevation in degrees (+30: above the face, looking down).
    pitch: int
    #: Camera azimuth in degrees (+90: a profile with the nose to the image's left).
    yaw: int

    @property
    def description(self) -> str:
        if self.pitch == 0 and self.yaw == 0:
            return "frontal"
        if self.pitch == 0:
            return f"{self.yaw:+d} deg horizontal" + (" (profile)" if self.is_profile else "")
        return f"{self.pitch:+d} deg vertical, {self.yaw:+d} deg horizontal"

    @property
    def is_profile(self) -> bool:
        """Extreme profiles (|yaw| >= 75): both eyes nearly coincide, the 5-point alignment is degenerate."""
        return abs(self.yaw) >= 75


ACCESSORIES: dict[str, Accessory] = {
    a.code: a
    for a in (
        Accessory("S001", "no accessory"),
        Accessory("S002", "glasses"),
        Accessory("S003", "horn-rimmed glasses"),
        Accessory("S004", "sunglasses"),
        Accessory("S005", "hat"),
        Accessory("S006", "hat + horn-rimmed glasses"),
    )
}


def _lights() -> dict[str, Light]:
    table = [Light(f"L{i}", lux, "all", 0) for i, lux in enumerate((1000, 400, 200, 150, 100, 40, 0), start=1)]
    n = 8
    for angle in (30, -15):  # L8-L11, L12-L15
        for lux in (400, 200, 100, 40):
            table.append(Light(f"L{n}", lux, "vertical", angle))
            n += 1
    for angle in (90, 45, 0, -45, -90):  # L16-L30
        for lux in (400, 200, 100):
            table.append(Light(f"L{n}", lux, "horizontal", angle))
            n += 1
    return {light.code: light for light in table}


LIGHTS: dict[str, Light] = _lights()

EXPRESSIONS: dict[str, Expression] = {
    e.code: e for e in (Expression("E01", "neutral"), Expression("E02", "broad smile"), Expression("E03", "frown"))
}

_CAMERA_ANGLES = [
    (0, 90), (0, 75), (0, 60), (0, 45), (0, 30), (0, 15), (0, 0), (0, -15), (0, -30), (0, -45),
    (0, -60), (0, -75), (0, -90), (30, 45), (30, 15), (30, 0), (30, -15), (30, -45), (-15, 30), (-15, -30),
]  # fmt: skip
CAMERAS: dict[str, Camera] = {f"C{i}": Camera(f"C{i}", p, y) for i, (p, y) in enumerate(_CAMERA_ANGLES, start=1)}

#: Per kind: the table, the code letter, the zero-padded width of the number, and a noun for errors.
_KINDS: dict[str, tuple[Mapping, str, int, str]] = {
    "acc": (ACCESSORIES, "S", 3, "accessory"),
    "light": (LIGHTS, "L", 0, "light"),
    "expr": (EXPRESSIONS, "E", 2, "expression"),
    "cam": (CAMERAS, "C", 0, "camera"),
}
_ALIASES = {"s": "acc", "accessory": "acc", "l": "light", "lux": "light", "e": "expr", "expression": "expr",
            "c": "cam", "camera": "cam", "angle": "cam"}  # fmt: skip

#: The original tutorial's selection: 2 x 3 x 4 = 24 images per identity.
TUTORIAL_SELECTION: dict[str, tuple[str, ...]] = {
    "acc": ("S001",),
    "light": ("L1", "L3"),
    "expr": ("E01", "E02", "E03"),
    "cam": ("C6", "C7", "C8", "C9"),
}
#: Annotation ``.txt`` files exist only for this accessory and these lights.
ANNOTATED_ACCESSORY = "S001"
ANNOTATED_LIGHTS: tuple[str, ...] = ("L1", "L3", "L6", "L7")

ID_PATTERN = re.compile(r"^\d{8}$")
_FACE_NAME = re.compile(r"^(\d{8})_(S\d{3})_(L\d{1,2})_(E\d{2})_(C\d{1,2})$", re.IGNORECASE)


def _kind(kind: str) -> str:
    key = _ALIASES.get(kind.lower(), kind.lower())
    if key not in _KINDS:
        raise ValueError(f"unknown code kind {kind!r}; valid: {', '.join(CODE_KINDS)}")
    return key


def all_codes(kind: str) -> tuple[str, ...]:
    """Every code of a kind, in order (``all_codes("cam")`` -> C1..C20)."""
    return tuple(_KINDS[_kind(kind)][0])


def code_range_text(kind: str) -> str:
    """``L1-L30``, ``E01-E03``...: the valid range, for messages."""
    codes = all_codes(kind)
    return f"{codes[0]}-{codes[-1]}"


def _format(kind: str, number: int) -> str:
    _, letter, width, _ = _KINDS[kind]
    return f"{letter}{number:0{width}d}"


def normalise_code(kind: str, token: str) -> str:
    """Canonical spelling of one code: ``l01`` -> ``L1``, ``e1`` -> ``E01``, ``3`` (as a light) -> ``L3``.

    Raises :class:`CodeError` naming the valid range when the code does not exist.
    """
    kind = _kind(kind)
    table, letter, _, noun = _KINDS[kind]
    text = str(token).strip()
    m = re.fullmatch(r"([A-Za-z]?)(\d+)", text)
    if m is None or (m.group(1) and m.group(1).upper() != letter):
        raise CodeError(
            f"{text!r} is not a K-Face {noun} code ({code_range_text(kind)})",
            hint=f"{noun.capitalize()} codes look like {letter}{'1' if _KINDS[kind][2] == 0 else '0' * (_KINDS[kind][2] - 1) + '1'}.",
        )
    code = _format(kind, int(m.group(2)))
    if code not in table:
        shown = text.upper() if m.group(1) else f"{letter}{text}"
        raise CodeError(f"{shown} is not a K-Face {noun} ({code_range_text(kind)})")
    return code


def parse_selection(kind: str, text: str | None, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Parse a list/range selection (``L1,L3``, ``C6-C9``, ``all``) into ordered, unique codes.

    ``None`` or an empty string gives ``default`` (the tutorial's selection when not given).
    """
    kind = _kind(kind)
    if text is None or not str(text).strip():
        return tuple(default if default is not None else TUTORIAL_SELECTION[kind])
    order = all_codes(kind)
    chosen: set[str] = set()
    for part in re.split(r"[,\s;]+", str(text).strip()):
        if not part:
            continue
        if part.lower() in ("all", "*"):
            chosen.update(order)
            continue
        if "-" in part:
            lo_text, _, hi_text = part.partition("-")
            if not lo_text or not hi_text:
                raise CodeError(
                    f"{part!r} is not a valid {_KINDS[kind][3]} range",
                    hint=f"Write ranges like {order[0]}-{order[-1]}.",
                )
            lo = normalise_code(kind, lo_text)
            hi_token = hi_text if re.match(r"[A-Za-z]", hi_text) else _KINDS[kind][1] + hi_text
            hi = normalise_code(kind, hi_token)
            i, j = order.index(lo), order.index(hi)
            if i > j:
                raise CodeError(f"range {part!r} is backwards", hint=f"Write it as {hi}-{lo}.")
            chosen.update(order[i : j + 1])
        else:
            chosen.add(normalise_code(kind, part))
    return tuple(c for c in order if c in chosen)


def describe(kind: str, code: str) -> str:
    """Human description of a code (``describe("light", "L7")`` -> ``0 lux, all lamps (dark)``)."""
    kind = _kind(kind)
    return _KINDS[kind][0][normalise_code(kind, code)].description


def is_identity_id(text: str) -> bool:
    """K-Face identity IDs are 8 digits (YYMMDD date + device + sequence), e.g. ``19062531``."""
    return bool(ID_PATTERN.match(str(text)))


def face_filename(codes: Mapping[str, str], ext: str = ".jpg") -> str:
    """``{"id": "19062531", "acc": "S001", ...}`` -> ``19062531_S001_L1_E01_C7.jpg``."""
    return f"{codes['id']}_{codes['acc']}_{codes['light']}_{codes['expr']}_{codes['cam']}{ext}"


def parse_face_filename(name: str | Path) -> dict[str, str]:
    """``19062531_S001_L1_E01_C7.jpg`` -> ``dict(id=..., acc="S001", light="L1", expr="E01", cam="C7")``.

    Raises :class:`CodeError` for a name that is not ``<ID>_<S>_<L>_<E>_<C>.<ext>`` or holds an
    invalid code.
    """
    stem = Path(name).stem
    m = _FACE_NAME.match(stem)
    if m is None:
        raise CodeError(
            f"{Path(name).name!r} is not a kface face file name",
            hint="Expected <8-digit ID>_<S>_<L>_<E>_<C>.jpg, e.g. 19062531_S001_L1_E01_C7.jpg.",
        )
    ident, *rest = m.groups()
    codes = {"id": ident}
    for kind, token in zip(CODE_KINDS, rest):
        codes[kind] = normalise_code(kind, token)
    return codes


def member_path(acc: str, light: str, expr: str, cam: str, ext: str = ".jpg") -> str:
    """The path of an image inside an identity's zip or folder: ``S001/L1/E01/C7.jpg``."""
    return f"{acc}/{light}/{expr}/{cam}{ext}"


def parse_member_path(path: str) -> dict[str, str] | None:
    """``S001/L1/E01/C7.jpg`` (any prefix folders allowed) -> codes dict without ``id``; None if not one."""
    parts = str(path).replace("\\", "/").split("/")
    if len(parts) < 4:
        return None
    acc, light, expr, last = parts[-4:]
    cam = last.rsplit(".", 1)[0]
    try:
        return {
            "acc": normalise_code("acc", acc) if acc.upper().startswith("S") else _raise(),
            "light": normalise_code("light", light) if light.upper().startswith("L") else _raise(),
            "expr": normalise_code("expr", expr) if expr.upper().startswith("E") else _raise(),
            "cam": normalise_code("cam", cam) if cam.upper().startswith("C") else _raise(),
        }
    except CodeError:
        return None


def _raise() -> str:
    raise CodeError("not a code")


def boxes_for_camera(cam: str) -> int:
    """How many boxes K-Face annotates for a camera: 7 frontal (C7, C16), 5 extreme profiles, else 6."""
    c = CAMERAS[normalise_code("cam", cam)]
    if c.yaw == 0:
        return 7
    return 5 if c.is_profile else 6
