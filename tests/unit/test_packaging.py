"""What a release packs: the ignore files (git's rules, `.rollwiseignore` after `.gitignore`),
`build.exclude` always, and a build that runs in a copy of the tree (never in the project)."""

from pathlib import Path

import pytest

from rollwise import artifacts
from rollwise.artifacts import Tree
from rollwise.errors import RollwiseError

DEFAULT_EXCLUDE = [".git", ".rollwise", ".venv", "__pycache__", "*.pyc"]


def make(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def packed(tree: Tree, exclude: list[str] = DEFAULT_EXCLUDE) -> list[str]:
    return [p.relative_to(tree.root).as_posix() for p in artifacts.files(tree, exclude)]


CASES = {
    "gitignore patterns match at any depth; a folder pattern only folders; ! takes back": (
        {
            ".gitignore": "*.log\nbuild/\n!keep.log\n/local.cfg\n",
            "app.py": "",
            "a.log": "",
            "keep.log": "",
            "build/out.js": "",
            "src/build/x.js": "",
            "src/b.log": "",
            "src/build.py": "",
            "local.cfg": "",
            "src/local.cfg": "",
        },
        [".gitignore", "app.py", "keep.log", "src/build.py", "src/local.cfg"],
    ),
    "a nested .gitignore is relative to its folder and wins over the one above": (
        {
            ".gitignore": "*.tmp\n",
            "x.tmp": "",
            "other/z.tmp": "",
            "sub/.gitignore": "!important.tmp\n/only-here\n",
            "sub/y.tmp": "",
            "sub/important.tmp": "",
            "sub/only-here": "",
            "sub/deeper/only-here": "",
        },
        [".gitignore", "sub/.gitignore", "sub/important.tmp", "sub/deeper/only-here"],
    ),
    "a dot-folder's own ignore file is relative to it": (
        {
            ".config/.gitignore": "/local.json\n",
            ".config/local.json": "",
            ".config/shared.json": "",
        },
        [".config/.gitignore", ".config/shared.json"],
    ),
    "nothing inside an ignored folder comes back (as in git)": (
        {".gitignore": "logs/\n!logs/keep.txt\n", "logs/keep.txt": "", "logs/a.txt": ""},
        [".gitignore"],
    ),
    ".rollwiseignore has the last word over .gitignore": (
        {
            ".gitignore": "dist/\n.env\n",
            ".rollwiseignore": "!dist/\ndist/*.map\ntests/\n",
            "dist/app.js": "",
            "dist/app.js.map": "",
            ".env": "",
            "tests/test_app.py": "",
            "app.py": "",
        },
        [".gitignore", ".rollwiseignore", "app.py", "dist/app.js"],
    ),
    "build.exclude always wins, over a ! too": (
        {
            ".rollwiseignore": "!.rollwise/\n!*.pyc\n",
            ".rollwise/state.db": "",
            "app.pyc": "",
            "pkg/__pycache__/m.pyc": "",
            "pkg/m.py": "",
        },
        [".rollwiseignore", "pkg/m.py"],
    ),
    "no ignore file: everything but build.exclude": (
        {"app.py": "", ".git/HEAD": "", "notes.log": ""},
        ["app.py", "notes.log"],
    ),
}


@pytest.mark.parametrize(("files", "expected"), CASES.values(), ids=CASES.keys())
def test_given_a_tree_and_its_ignore_files_then_exactly_these_files_are_packed(
    tmp_path, files, expected
):
    assert packed(Tree(make(tmp_path, files))) == expected


def test_build_exclude_takes_gitignore_patterns_with_slashes(tmp_path):
    tree = Tree(
        make(
            tmp_path,
            {
                "static/app.js.map": "",
                "app.js.map": "",
                "static/a.js": "",
                ".github/workflows/ci.yml": "",
                ".github/CODEOWNERS": "",
            },
        )
    )

    assert packed(tree, ["static/*.map", ".github/workflows/"]) == [
        "app.js.map",
        ".github/CODEOWNERS",
        "static/a.js",
    ]


SOURCE = {
    ".gitignore": "dist/\n*.log\n",
    ".rollwiseignore": "notes.md\n",
    "app.py": "print('v1')\n",
    "debug.log": "junk",
    "notes.md": "",
    "dist/old.js": "old",
}
BUILD = (
    'seen=$(find . -type f | sort) && echo "$seen" > seen.txt && mkdir -p dist '
    "&& echo built > dist/app.js && echo changed > app.py && touch build.log"
)


def test_given_a_build_command_then_it_runs_in_a_copy_of_what_would_be_packed(tmp_path):
    source = make(tmp_path / "src", SOURCE)
    before = contents(source)

    with artifacts.built(source, BUILD, DEFAULT_EXCLUDE) as tree:
        seen = (tree.root / "seen.txt").read_text().split()
        got = packed(tree)
        built_app = (tree.root / "app.py").read_text()

    assert seen == ["./.gitignore", "./.rollwiseignore", "./app.py"]
    # what the build made is packed (.gitignore chose only what it started from);
    # .rollwiseignore and build.exclude still apply
    assert got == [
        ".gitignore",
        ".rollwiseignore",
        "app.py",
        "build.log",
        "seen.txt",
        "dist/app.js",
    ]
    assert built_app == "changed\n"
    assert contents(source) == before  # the project is untouched
    assert not tree.root.exists()  # the copy is gone


def test_given_no_build_command_then_the_source_itself_is_packed(tmp_path):
    source = make(tmp_path / "src", {**SOURCE, ".rollwiseignore": "!dist/\n"})

    with artifacts.built(source, None, DEFAULT_EXCLUDE) as tree:
        assert (tree.root, packed(tree)) == (
            source,
            [".gitignore", ".rollwiseignore", "app.py", "notes.md", "dist/old.js"],
        )


def test_given_a_failing_build_then_refused_and_the_copy_is_removed(tmp_path):
    source = make(tmp_path / "src", SOURCE)

    with (
        pytest.raises(RollwiseError, match="build command exited with 3") as e,
        artifacts.built(source, "pwd > where; echo $PWD >&2; exit 3", []),
    ):
        pass

    copy = Path(e.value.hint.splitlines()[-1])
    assert copy.name == "src" and copy != source and not copy.exists()
