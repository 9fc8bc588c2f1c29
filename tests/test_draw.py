"""Drawing results: labels in any script render (never crash), boxes land where the faces are."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from kface_cli.deploy.draw import draw_faces, font_for, missing_glyphs, render_text


def test_render_text_handles_every_script():
    for text in ["Alice", "김철수", "Zoë", "Ольга", "李小龍 👩‍🔬", "tab\there\u200b", ""]:
        mask = render_text(text, 20)
        assert mask.dtype == np.uint8 and mask.shape[0] == 20
    assert render_text("Alice", 20).max() > 128  # glyphs are drawn
    assert render_text("김철수", 20).max() > 0  # real Hangul glyphs or Last Resort placeholders
    assert render_text("abc", 20).shape[1] < render_text("abcabcabc", 20).shape[1]


def test_font_choice_and_missing_glyph_report():
    assert font_for("A") is not None and "DejaVu" in font_for("A")
    assert missing_glyphs("Alice") == ""


def test_missing_glyphs_names_exactly_the_characters_no_font_has(monkeypatch):
    from kface_cli.deploy import draw

    latin_only = font_for("A")  # DejaVu: Latin, no Hangul
    try:
        draw.font_for.cache_clear()
        monkeypatch.setattr(draw, "_font_files", lambda: [latin_only])
        assert draw.missing_glyphs("김철수 Kim") == "김철수"
        assert draw.font_for("김") is None
        draw.font_for.cache_clear()
        monkeypatch.setattr(draw, "_font_files", lambda: [])
        assert draw.missing_glyphs("Kim") == "Kim"
    finally:
        draw.font_for.cache_clear()


def test_draw_faces_marks_boxes_and_keeps_the_input():
    image = np.full((200, 300, 3), 100, np.uint8)
    faces = [
        SimpleNamespace(box=(50, 60, 80, 90), name="김철수", distance=0.41),
        SimpleNamespace(box=(200, 5, 60, 60), name="unknown", distance=float("inf")),
        SimpleNamespace(box=(-20, 150, 400, 400), name="Zoë", distance=1.0),  # partly outside
    ]
    out = draw_faces(image, faces)
    assert np.all(image == 100)  # input untouched
    assert out.shape == image.shape
    assert np.any(out[60, 50:130] != 100) and np.any(out[60:150, 50] != 100)  # the first box's edges
    assert np.all(out[120, 100] == 100)  # inside the box stays clear
