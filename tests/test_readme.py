import re
from pathlib import Path

from fraudapp.features import FEATURE_NAMES

README = Path(__file__).resolve().parent.parent / "README.md"


def feature_table_names(text: str) -> list[str]:
    """The backticked first cells of the table rows in the README's `## Features` section."""
    section = re.search(r"^## Features\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section is not None, "the README has no '## Features' section"
    return re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", section.group(1), flags=re.MULTILINE)


def test_every_feature_is_in_the_readme_feature_table() -> None:
    documented = feature_table_names(README.read_text())
    assert set(FEATURE_NAMES) - set(documented) == set(), "features missing from the README table"
    assert set(documented) - set(FEATURE_NAMES) == set(), "README lists features that do not exist"
    assert len(documented) == len(set(documented)), "a feature is listed twice in the README"
