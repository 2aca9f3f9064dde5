"""Where the client finds its URL, token and dataset: arguments > environment > file."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from neblina_client import Client, ConfigurationError
from neblina_client._config import load_settings

FILE_URL = "http://from-file.test"
FILE_TOKEN = "nbl_file_token"


def write_env_file(directory: Path, text: str) -> Path:
    path = directory / ".neblina" / "local.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(isolated_config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose .neblina/local.env sets everything, entered from a subdirectory."""
    write_env_file(
        isolated_config,
        "# written by the local stack\n"
        "\n"
        f"NEBLINA_URL={FILE_URL}/\n"
        f'NEBLINA_TOKEN="{FILE_TOKEN}"\n'
        "  NEBLINA_DATASET = FILE_DS  \n",
    )
    subdirectory = isolated_config / "notebooks" / "deep"
    subdirectory.mkdir(parents=True)
    monkeypatch.chdir(subdirectory)
    return isolated_config


def test_file_is_found_from_a_subdirectory(project: Path) -> None:
    client = Client()
    assert (client.url, client._token, client.dataset) == (FILE_URL, FILE_TOKEN, "FILE_DS")


def test_environment_beats_file(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBLINA_URL", "https://from-env.test")
    monkeypatch.setenv("NEBLINA_DATASET", "ENV_DS")
    client = Client()
    assert (client.url, client._token, client.dataset) == (
        "https://from-env.test",
        FILE_TOKEN,  # not in the environment: still from the file
        "ENV_DS",
    )


def test_arguments_beat_environment_and_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBLINA_URL", "https://from-env.test")
    monkeypatch.setenv("NEBLINA_TOKEN", "nbl_env_token")
    monkeypatch.setenv("NEBLINA_DATASET", "ENV_DS")
    client = Client("https://from-arg.test", "nbl_arg_token", "ARG_DS")
    assert (client.url, client._token, client.dataset) == (
        "https://from-arg.test",
        "nbl_arg_token",
        "ARG_DS",
    )


def test_empty_environment_variable_counts_as_unset(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEBLINA_URL", "  ")
    assert Client().url == FILE_URL


def test_nearest_file_wins(project: Path) -> None:
    write_env_file(project / "notebooks", "NEBLINA_URL=http://nearer.test\nNEBLINA_TOKEN=nbl_n\n")
    client = Client()
    assert (client.url, client._token, client.dataset) == ("http://nearer.test", "nbl_n", "PENGUIN")


def test_files_are_not_merged(project: Path) -> None:
    write_env_file(project / "notebooks", "NEBLINA_URL=http://nearer.test\n")
    with pytest.raises(ConfigurationError, match="NEBLINA_TOKEN"):
        Client()


def test_dataset_defaults_to_penguin(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client("http://h.test", "nbl_t")
    assert client.dataset == "PENGUIN"
    monkeypatch.setenv("NEBLINA_DATASET", "ENV_DS")
    assert Client("http://h.test", "nbl_t").dataset == "ENV_DS"


def test_missing_url_names_the_variable_and_the_file(isolated_config: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Client(token="nbl_t")
    text = str(caught.value)
    assert "NEBLINA_URL" in text
    assert ".neblina/local.env" in text
    assert "url=" in text
    assert str(isolated_config) in text  # where the search started


def test_missing_token_names_the_variable_and_the_file_found(
    isolated_config: Path,
) -> None:
    path = write_env_file(isolated_config, "NEBLINA_URL=http://h.test\n")
    with pytest.raises(ConfigurationError) as caught:
        Client()
    text = str(caught.value)
    assert "NEBLINA_TOKEN" in text
    assert "token=" in text
    assert str(path) in text
    assert caught.value.code == "configuration_error"


def test_malformed_file_line_is_reported_with_its_location(isolated_config: Path) -> None:
    path = write_env_file(isolated_config, "NEBLINA_URL=http://h.test\nthis is not a pair\n")
    with pytest.raises(ConfigurationError, match=re.escape(f"{path}:2")):
        Client()


def test_file_is_not_read_when_arguments_suffice(isolated_config: Path) -> None:
    write_env_file(isolated_config, "garbage\n")
    assert Client("http://h.test", "nbl_t", "DS").url == "http://h.test"


@pytest.mark.parametrize("url", ["ftp://h.test", "h.test:8000", "localhost"])
def test_url_needs_an_http_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError, match="http://"):
        Client(url, "nbl_t")


def test_base_path_and_trailing_slash_are_kept_right() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"datasets": []})

    client = Client("http://h.test/prod/", "nbl_t", transport=httpx.MockTransport(handler))
    assert client.datasets() == []
    assert seen == ["http://h.test/prod/v1/datasets"]


def test_token_is_not_in_any_repr(project: Path) -> None:
    client = Client()
    assert FILE_TOKEN not in repr(client)
    assert FILE_TOKEN not in str(client)
    assert repr(client) == f"Client(url={FILE_URL!r}, dataset='FILE_DS')"


def test_settings_repr_hides_the_token() -> None:
    settings = load_settings("http://h.test", "nbl_secret_value", None)
    assert settings.token == "nbl_secret_value"
    assert "nbl_secret_value" not in repr(settings)


def test_negative_max_retries_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        Client("http://h.test", "nbl_t", max_retries=-1)
