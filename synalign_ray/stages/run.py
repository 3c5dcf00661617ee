"""`synalign run`: read -> embed -> tracker + generator pool -> embed generated -> align -> score -> report, each step
in its own folder under output.path; a rerun skips the complete ones and resumes generation."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable


from synalign_ray import io, runtime
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.real_input import RealInput, plan_input
from synalign_ray.run_folder import RunFolder, settings_for
from synalign_ray.stages.common import DROP_REASON, GENERATED_ID, stamp, top_reasons
from synalign_ray.stages import embed
from synalign_ray.stages.generate import check_generated_rows, generate_stage

log = logging.getLogger(__name__)

RUN_STAGES = ("embeddings", "generated", "generated_embeddings", "aligned")
# Every section that shapes a run's rows; NOT_RESULTS keys inside them (resources, paths) are left out.
SECTIONS = ("data", "embedding", "selection", "generation", "alignment", "quality", "output")

StageConfig = Callable[[str], SynAlignConfig]


def _align_kept(run_dir: io.Location, cfg: SynAlignConfig) -> dict[str, Any]:
    """Align the kept rows of `generated_embeddings` toward the rows of `embeddings` into the run's `aligned` folder
    (or reuse it). The shards read their rows from those folders; the generated rows carry generated_id (their id
    in generated_embeddings) and the input's column names."""
    from synalign_ray.alignment.align import align_folders

    with RunFolder(run_dir.join("aligned"), cfg.storage).open(settings_for(cfg, SECTIONS),
                                                              cfg.output.overwrite) as folder:
        if folder.reused is not None:
            return folder.reused
        names = {io.ROW_ID: GENERATED_ID, "text": cfg.data.text_column}
        if cfg.data.label_column:
            names["label"] = cfg.data.label_column
        real = FolderRows.of(run_dir.join("embeddings").url, cfg.storage, "embeddings")
        generated = FolderRows.of(run_dir.join("generated_embeddings").url, cfg.storage, "generated rows",
                                  kept_column=DROP_REASON, rename=names)
        return align_folders(cfg, real, generated, folder)


def run_stage(cfg: SynAlignConfig, pool: Any = None) -> dict[str, Any]:
    """`synalign run`: every stage writes its own folder with a manifest under output.path; running the same
    command again skips completed stages and resumes generation from the last completed batch. `pool`: a running
    GeneratorPool of the same model to reuse (tests share one engine per session)."""
    from synalign_ray.generation.presets import load_preset
    from synalign_ray.models import check_llm

    load_preset(cfg.generation.preset, cfg.generation.presets_file)
    plan = plan_input(cfg.data, cfg.storage)
    check_llm(cfg.generation.model)
    embed.check_embedding_model(cfg)
    run_dir = io.resolve(cfg.output.path, cfg.storage)
    with RunFolder(run_dir, cfg.storage).open(settings_for(cfg, SECTIONS), cfg.output.overwrite,
                                              resume=True) as folder:
        if folder.reused is not None:
            return folder.reused

        def stage_cfg(name: str) -> SynAlignConfig:
            return cfg.model_copy(update={"output": cfg.output.model_copy(
                update={"path": run_dir.join(name).url, "overwrite": False})})

        return _run(cfg, folder, plan, stage_cfg, pool)


def _run(cfg: SynAlignConfig, folder: RunFolder, plan: RealInput, stage_cfg: StageConfig, pool: Any
         ) -> dict[str, Any]:
    from synalign_ray.stages.score import _generated_embeddings_stage, _score_run
    from synalign_ray.report import write_report

    run_dir = folder.loc
    manifests: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    t_run = time.monotonic()

    def timed(name: str, step: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = step()
        timings[name] = time.monotonic() - t0
        return result

    with runtime.ray_session(cfg.resources):
        manifests["embeddings"] = timed("embed_real", lambda: embed.embed_stage(stage_cfg("embeddings"), plan))
        # The tracker actor reads the embeddings folder itself; the driver sees groups and their texts.
        manifests["generated"] = gen = timed("generate", lambda: generate_stage(
            stage_cfg("generated"), embeddings_path=run_dir.join("embeddings").url, pool=pool))
        check_generated_rows(gen)
        # The input rows stay in their folder: the steps below read the few they score or send tasks to them.
        real = FolderRows.of(run_dir.join("embeddings").url, cfg.storage, "embeddings")
        real_rows = manifests["embeddings"]["rows"]
        # Kept and dropped rows embedded by marker actors; near-copies of input rows and label mismatches marked
        # dropped.
        manifests["generated_embeddings"] = timed("embed_generated", lambda: _generated_embeddings_stage(
            run_dir, run_dir.join("generated"), gen, real, stage_cfg))
        kept_rows = manifests["generated_embeddings"]["kept_rows"]
        if kept_rows == 0:
            raise InputError(f"every generated row failed a quality check "
                             f"({top_reasons(manifests['generated_embeddings']['failed_checks'])}); the rows are in "
                             f"{run_dir.join('generated_embeddings').url}")
        manifests["aligned"] = al = timed("align", lambda: _align_kept(run_dir, stage_cfg("aligned")))
        # What the rows are worth: every set scored against real rows the generator never saw.
        generated = FolderRows.of(run_dir.join("generated_embeddings").url, cfg.storage, "generated rows")
        quality = timed("quality", lambda: _score_run(cfg, real, generated, run_dir.join("aligned"), al))

    manifest = stamp({
        "kind": "run", "input": cfg.data.path,
        "stages": {name: run_dir.join(name).url for name in RUN_STAGES},
        "counts": {"real_rows": real_rows, "groups": gen["groups_done"], "failed_groups": len(gen["failed_groups"]),
                   "generated_rows": gen["rows"] + gen.get("dropped_rows", 0),
                   "duplicates_removed": gen["duplicates_removed"],
                   "failed_checks": manifests["generated_embeddings"]["failed_checks"],
                   "kept_rows": kept_rows,
                   "aligned_rows": al["counts"]["rows"], "distinct_fraction": al["counts"]["distinct_fraction"]},
        "tokens": gen["tokens"], "generator_busy_fraction": gen["pool"]["busy_fraction"],
        "quality": quality, "metrics": al["metrics"], "fit": al.get("fit", {}),
        "timings_this_invocation": {k: round(v, 3) for k, v in timings.items()},
        "seconds_this_invocation": round(time.monotonic() - t_run, 3)}, folder, cfg)
    manifest["report"] = write_report(run_dir, cfg, manifest)
    folder.finish(manifest)
    c = manifest["counts"]  # the same counts as the CLI's closing line
    log.info("run complete: %d real rows -> %d generated -> %d kept -> %d aligned rows in %s", real_rows,
             c["generated_rows"], c["kept_rows"], c["aligned_rows"], run_dir.url)
    return manifest
