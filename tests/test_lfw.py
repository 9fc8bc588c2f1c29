"""LFW pairs.txt parsing, on a small file written here in the real format."""

from __future__ import annotations

import pytest

from kface_cli.errors import InputError
from kface_cli.formats.lfw import lfw_image_path, read_lfw_pairs

# 2 folds x 2 pairs per class, tab-separated like the real file (one line space-separated)
PAIRS_TXT = "2\t2\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\nAbdel_Madi_Shabneh\t1\tDean_Barker\t1\nZico 2 Dean_Barker 13\n" \
            "Zico\t1\t2\nZico\t2\t3\nAaron_Sorkin\t2\tZico\t1\nAnn_Veneman\t10\tZico\t3\n"  # fmt: skip


def test_parses_folds_paths_and_labels(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text(PAIRS_TXT)
    res = read_lfw_pairs(f, tmp_path / "lfw")
    assert (res.nfolds, res.per_fold) == (2, 2)
    assert [p.same for p in res.pairs] == [True, True, False, False] * 2
    assert res.pairs[0].path1 == tmp_path / "lfw" / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg"
    assert res.pairs[0].path2.name == "Abel_Pacheco_0004.jpg"
    assert res.pairs[3].path1.name == "Zico_0002.jpg" and res.pairs[3].path2.name == "Dean_Barker_0013.jpg"
    assert res.pairs[7].path1.name == "Ann_Veneman_0010.jpg"
    assert res.pairs[2].codes1 == {"id": "Abdel_Madi_Shabneh"} and res.pairs[2].codes2 == {"id": "Dean_Barker"}


def test_file_without_header_is_accepted(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("\n".join(PAIRS_TXT.splitlines()[1:]) + "\n")
    res = read_lfw_pairs(f, tmp_path)
    assert res.nfolds is None and len(res.pairs) == 8


@pytest.mark.parametrize(
    "text,match",
    [
        ("2\t2\nAbel_Pacheco\t1\t4\n", "header says"),
        ("1\t1\nA\t1\tB\t2\nC\t1\t2\n", "same pairs followed by"),
        ("A\t1\n", "expected 'name n1 n2'"),
        ("A\tx\t2\n", "image number"),
        ("", "empty"),
    ],
)
def test_malformed_files_raise(tmp_path, text, match):
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(InputError, match=match):
        read_lfw_pairs(f, tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_lfw_pairs(tmp_path / "nope.txt", tmp_path)
    assert lfw_image_path("r", "A_B", 7).as_posix() == "r/A_B/A_B_0007.jpg"
