"""The Python API: one function per stage, taking a config (object or YAML path) plus paths, returning the manifest.

`from synalign_ray import SynAlignConfig, run, embed, select, generate, align, evaluate`; the CLI calls these too.
"""

from __future__ import annotations

import os
from typing import Any, Union

from pydantic import ValidationError

from synalign_ray.config import SynAlignConfig, load_config
from synalign_ray.errors import ConfigError

ConfigLike = Union[SynAlignConfig, str, os.PathLike, None]


def _config(config: ConfigLike, *, data: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
            overwrite: bool | None = None, size: int | None = None) -> SynAlignConfig:
    """A validated copy of `config` with the given paths set as values: never re-parsed as YAML (an output
    named `2024`, `yes` or `a: b` stays that string), and the caller's config object is never changed."""
    cfg = config.model_copy(deep=True) if isinstance(config, SynAlignConfig) else load_config(config)
    values = {("data", "path"): os.fspath(data) if data is not None else None,
              ("output", "path"): os.fspath(output) if output is not None else None,
              ("output", "overwrite"): overwrite, ("alignment", "size"): size}
    for (section, key), value in values.items():
        if value is None:
            continue
        try:
            setattr(getattr(cfg, section), key, value)  # the models validate on assignment
        except ValidationError as err:
            raise ConfigError(f"invalid config: {section}.{key}: {err.errors()[0]['msg']}") from None
    return cfg


def embed(config: ConfigLike = None, *, input: str | os.PathLike | None = None,
          output: str | os.PathLike | None = None, overwrite: bool | None = None) -> dict[str, Any]:
    """Embed the real rows (`input`, else `data.path`) into `output` (else `output.path`)."""
    from synalign_ray.stages.embed import embed_stage

    return embed_stage(_config(config, data=input, output=output, overwrite=overwrite))


def select(config: ConfigLike = None, *, embeddings: str | os.PathLike, output: str | os.PathLike | None = None,
           overwrite: bool | None = None) -> dict[str, Any]:
    """The GP selection schedule for `embeddings` (a completed `embed` output) into `output`."""
    from synalign_ray.stages.select import select_stage

    return select_stage(_config(config, output=output, overwrite=overwrite), os.fspath(embeddings))


def generate(config: ConfigLike = None, *, input: str | os.PathLike | None = None,
             output: str | os.PathLike | None = None, schedule: str | os.PathLike | None = None,
             overwrite: bool | None = None) -> dict[str, Any]:
    """Generate rows for the real rows' groups (`schedule`, a `select` output, or selected on the fly); resumable."""
    from synalign_ray.stages.generate import generate_stage

    return generate_stage(_config(config, data=input, output=output, overwrite=overwrite),
                          schedule_path=os.fspath(schedule) if schedule is not None else None)


def align(config: ConfigLike = None, *, real: str | os.PathLike, synthetic: str | os.PathLike,
          output: str | os.PathLike | None = None, size: int | None = None,
          overwrite: bool | None = None) -> dict[str, Any]:
    """Weights and a weighted resample of `synthetic` rows toward `real` rows (raw text or embedded outputs)."""
    from synalign_ray.stages.align import align_stage

    return align_stage(_config(config, output=output, overwrite=overwrite, size=size), os.fspath(real),
                       os.fspath(synthetic))


def run(config: ConfigLike = None, *, output: str | os.PathLike | None = None, overwrite: bool | None = None,
        pool: Any = None) -> dict[str, Any]:
    """The whole job (embed, select, generate, align, score, report) into `output`; resumable. Without a config:
    the packaged local demo, as `synalign run`. `pool`: a running `generation.pool.GeneratorPool` of the same model
    to reuse, so a notebook running several configs starts the engine once."""
    from synalign_ray.config import DEFAULT_RUN_CONFIG
    from synalign_ray.stages.run import run_stage

    return run_stage(_config(DEFAULT_RUN_CONFIG if config is None else config, output=output, overwrite=overwrite),
                     pool=pool)


def coverage(config: ConfigLike = None, *, embeddings: str | os.PathLike, schedule: str | os.PathLike,
             seeds: int = 5) -> dict[str, Any]:
    """How well a schedule's groups cover the real rows, against random groups of the same shape."""
    from synalign_ray.stages.select import coverage_stage

    return coverage_stage(_config(config), os.fspath(embeddings), os.fspath(schedule), seeds=seeds)
