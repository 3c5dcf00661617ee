"""Paths given as flags are set on the config as values, never re-parsed as YAML; select and coverage name their
embeddings folder --embeddings, and `--input` there gets an error that says so."""

import pytest

from synalign_ray import api
from synalign_ray.cli import main
from synalign_ray.config import build_config


@pytest.mark.parametrize("name", ["2024", "yes", "a: b", "null", "[x]"])
def test_output_named_like_a_yaml_value_reaches_the_stage(tmp_path, monkeypatch, capsys, name):
    # Relative to the working directory, as a user types it. The input is missing, so the command stops at the
    # first check after the config was built: the error names the input, not output.path.
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "--input", "nope.parquet", "--output", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "input not found" in err and "output.path" not in err, err


@pytest.mark.parametrize("name", ["2024", "yes", "a: b"])
def test_input_named_like_a_yaml_value_is_the_data_path(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "--input", name, "--output", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"input not found: {tmp_path / name}" in err, err


def test_api_sets_paths_on_a_copy():
    cfg = build_config({})
    got = api._config(cfg, data="2024", output="yes", overwrite=True, size=77)
    assert (got.data.path, got.output.path, got.output.overwrite, got.alignment.size) == ("2024", "yes", True, 77)
    assert cfg.output.path == "synalign_output" and cfg.data.path is None and not cfg.output.overwrite


@pytest.mark.parametrize("command", ["select", "coverage"])
def test_input_on_an_embeddings_command_points_to_embeddings(tmp_path, capsys, command):
    extra = ["--schedule", str(tmp_path / "s")] if command == "coverage" else []
    assert main([command, "--input", "emb/", *extra]) == 2  # the spelling of the previous release
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"synalign {command}: error: `synalign {command}` reads a `synalign embed` output folder: pass "
                   "it as --embeddings emb/ (--input names a data file, for embed and generate)")
    assert main([command, *extra]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"synalign {command}: error: `synalign {command}` needs --embeddings, a `synalign embed` output folder")


def test_evaluate_needs_a_test_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "some_run"])
    assert exc.value.code == 2 and "--test" in capsys.readouterr().err
