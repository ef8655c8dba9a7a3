import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fraudapp.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    documented = set(re.findall(r"^\|\s*`(FRAUDAPP_[A-Z0-9_]+)`", text, flags=re.MULTILINE))
    expected = {f"FRAUDAPP_{name.upper()}" for name in Settings.model_fields}
    assert expected - documented == set(), "settings missing from the README table"
    assert documented - expected == set(), "README documents settings that do not exist"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDAPP_REVIEW_SCORE", "55")
    monkeypatch.setenv("FRAUDAPP_API_KEYS", '{"k1": ["score", "admin"]}')
    settings = Settings()
    assert settings.review_score == 55
    assert settings.api_keys == {"k1": ["score", "admin"]}
    assert settings.data_dir == Path(".fraudapp")


def test_thresholds_out_of_order_name_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDAPP_REVIEW_SCORE", "95")
    monkeypatch.setenv("FRAUDAPP_DECLINE_SCORE", "90")
    with pytest.raises(ValidationError, match="FRAUDAPP_REVIEW_SCORE"):
        Settings()


def test_unknown_scope_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUDAPP_API_KEYS", '{"k1": ["root"]}')
    with pytest.raises(ValidationError):
        Settings()
