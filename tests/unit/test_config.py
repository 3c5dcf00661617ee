"""Config: strict pydantic sections, YAML loading, dotted overrides, errors that name the key."""

import pytest
import yaml

from synalign_ray.config import SynAlignConfig, build_config, load_config
from synalign_ray.errors import ConfigError


def test_defaults_are_valid():
    cfg = SynAlignConfig()
    assert cfg.embedding.model == "all-MiniLM-L6-v2"
    assert cfg.output.path == "synalign_output"


def test_yaml_then_overrides_with_typed_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"embedding": {"batch_size": 64}, "output": {"path": "s3://b/p"}}))
    cfg = load_config(f, ["embedding.batch_size=32", "data.label_column=null", "embedding.num_actors=2"])
    assert cfg.embedding.batch_size == 32 and isinstance(cfg.embedding.batch_size, int)
    assert cfg.data.label_column is None
    assert cfg.embedding.num_actors == 2
    assert cfg.output.path == "s3://b/p"


@pytest.mark.parametrize("override, key", [
    ("embedding.batch_size=-1", "embedding.batch_size"),
    ("embedding.batchsize=3", "embedding.batchsize: unknown config key"),
    ("nosection.x=1", "nosection: unknown config key"),
    ("selection.threshold=1.5", "selection.threshold"),
    ("selection.kernel=linear", "selection.kernel"),
    ("embedding.num_actors=zero", "embedding.num_actors"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        build_config({}, [override])
    assert key in str(err.value)


def test_unknown_key_in_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("embedding:\n  modle: x\n")
    with pytest.raises(ConfigError, match="embedding.modle: unknown config key"):
        load_config(f)


def test_bad_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("embedding: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    with pytest.raises(ConfigError, match="key.path=value"):
        build_config({}, ["embedding.batch_size"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        build_config({}, ["output.path=x", "output.path.sub=1"])


def test_text_and_label_columns_must_differ():
    with pytest.raises(ConfigError, match="label_column must differ"):
        build_config({}, ["data.label_column=text"])


def test_secrets_are_masked_in_dumps():
    cfg = build_config({}, ["storage.access_key_id=AKIAEXAMPLE123", "storage.secret_access_key=topsecretvalue"])
    dumped = str(cfg.redacted()) + repr(cfg) + str(cfg)
    assert "AKIAEXAMPLE123" not in dumped and "topsecretvalue" not in dumped
    assert cfg.storage.secret_access_key.get_secret_value() == "topsecretvalue"
