"""README.md and docs/ cannot drift: generated numbers equal their files, links resolve, shown commands use real
flags, the code cites sections that exist — each check shown to fail on a doctored copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from docs_support import broken_citations, broken_links, commands, slug, unknown_flags

from analysis.results_page import drift, render_document

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def copy_of_docs(tmp_path: Path) -> Path:
    """README.md, docs/, assets/ and the scripts' folders' top level, copied (the scripts themselves are imported
    from the real tree)."""
    shutil.copy(ROOT / "README.md", tmp_path)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "assets", tmp_path / "assets")
    return tmp_path


def test_readme_is_short_and_starts_with_what_a_newcomer_needs():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    head = "\n".join(lines[:60])
    for marker in ("<!-- main-command -->", "<!-- test-command -->", "<!-- generated: table"):
        assert marker in head


def test_generated_blocks_equal_their_files():
    assert drift(ROOT) == []


def test_a_doctored_number_or_file_is_caught(copy_of_docs: Path):
    readme = copy_of_docs / "README.md"
    text = readme.read_text()
    start = text.index("<!-- generated: table")
    first_number = start + text[start:].index("| 0.") + 2  # a number in the block's first data row
    readme.write_text(text[:first_number] + "9" + text[first_number + 1 :])
    assert any("README.md" in p and "differs" in p for p in drift(copy_of_docs))

    readme.write_text(text)
    assert drift(copy_of_docs) == []
    table = copy_of_docs / "assets/results/readme_command/table.csv"
    rows = table.read_text().splitlines()
    cells = rows[-1].split(",")
    i = next(i for i, c in enumerate(cells) if c.startswith("0.7"))  # a Dice mean
    cells[i] = "0.1" + cells[i][3:]
    table.write_text("\n".join(rows[:-1] + [",".join(cells)]) + "\n")
    assert drift(copy_of_docs)
    assert render_document(copy_of_docs, text) != text  # the generator rebuilds the block from the new file


def test_links_and_images_resolve():
    assert broken_links(ROOT) == []


def test_a_broken_link_or_anchor_is_caught(copy_of_docs: Path):
    page = copy_of_docs / "docs" / "training.md"
    page.write_text(page.read_text() + "\nSee [x](data.md#no-such-section) and ![y](../assets/none.png).\n")
    problems = broken_links(copy_of_docs)
    assert any("no-such-section" in p for p in problems) and any("none.png" in p for p in problems)


def test_code_cites_existing_doc_sections():
    assert broken_citations(ROOT) == []


def test_shown_commands_use_flags_their_scripts_accept():
    assert unknown_flags(ROOT) == []


def test_an_unknown_flag_in_a_shown_command_is_caught(copy_of_docs: Path):
    page = copy_of_docs / "docs" / "evaluation.md"
    page.write_text(page.read_text() + "\n```bash\npython val.py -weights X -no_such_flag 3\n```\n")
    (copy_of_docs / "val.py").symlink_to(ROOT / "val.py")
    assert any("-no_such_flag" in p for p in unknown_flags(copy_of_docs))


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Pretrained weights at any image size", "pretrained-weights-at-any-image-size"),
        ("`-compat reference`", "-compat-reference"),
        ("The rules that keep a run whole", "the-rules-that-keep-a-run-whole"),
        ("Speed and scale", "speed-and-scale"),
    ],
)
def test_anchor_slugs_follow_githubs_rule(heading, anchor):
    assert slug(heading) == anchor


def test_commands_are_found_in_blocks_continuations_and_inline_code():
    text = (
        "```bash\npip install x && python train.py -seed 1 \\\n    -epochs 2  # a comment -nope\n```\n"
        "Inline `python val.py -weights W` and `torchrun --nproc_per_node 2 train.py -b 4`.\n"
    )
    assert commands(text) == [
        ["train.py", "-seed", "1", "-epochs", "2"],
        ["val.py", "-weights", "W"],
        ["train.py", "-b", "4"],
    ]


def test_a_sessions_block_shows_each_position_of_the_rows_asked(tmp_path: Path):
    folder = tmp_path / "assets" / "s"
    folder.mkdir(parents=True)
    (folder / "sessions.csv").write_text(
        "configuration,position,n,Dice_follow@1_mean,Dice_follow@1_std\n"
        "mem,1,3,0.7,0.01\nmem,2,3,0.8,0.02\nmem,3,3,0.85,0.03\nreset,1,3,0.7,0.01\n"
    )
    text = '<!-- generated: sessions assets/s rows=mem positions=2-3 head="first" -->\n<!-- end -->\n'
    got = render_document(tmp_path, text)
    assert "| mem | 2 | 3 | 0.800 ± 0.020 |" in got and "| mem | 3 | 3 | 0.850 ± 0.030 |" in got
    assert "| mem | 1 |" not in got and "reset" not in got


def test_column_specs_expand_round_ranges_and_keep_per_run_columns():
    from analysis.results_page import _columns

    assert _columns("Dice_follow@1-3,Follow_accuracy@6,DSC_AUC,NoC@0.85") == [
        "Dice_follow@1",
        "Dice_follow@2",
        "Dice_follow@3",
        "Follow_accuracy@6",
        "DSC_AUC",
        "NoC@0.85",
    ]
