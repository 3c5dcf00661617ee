"""The one run configuration: pydantic models grouped by module, strict (unknown keys are errors).

Load with `load_config(path, overrides)`: YAML first, then dotted `key=value` overrides from the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)

from synalign_ray.errors import ConfigError
from synalign_ray.overrides import apply_overrides, yaml_error_line

# The embedded local demo `synalign run` uses when no --config is given.
DEFAULT_RUN_CONFIG = Path(__file__).resolve().parent / "configs" / "local.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Keys that change how a step runs (resources, speed, where it writes) but never what it writes. Declared once
    # per section; the resume fingerprint (run_folder.settings_for) is everything else.
    NOT_RESULTS: ClassVar[frozenset[str]] = frozenset()

    def results_dump(self) -> dict[str, Any]:
        """The settings that shape results, JSON-safe: every key except NOT_RESULTS, at every depth."""
        out = self.model_dump(mode="json", exclude=set(self.NOT_RESULTS))
        for name in out:
            value = getattr(self, name)
            if isinstance(value, _Strict):
                out[name] = value.results_dump()
        return out


class DataConfig(_Strict):
    """Where the real rows come from and which columns hold text and label."""

    path: str | None = Field(default=None, description="Parquet, JSONL or CSV file/folder; local or s3://")
    format: Literal["auto", "parquet", "jsonl", "csv"] = "auto"
    text_column: str = "text"
    label_column: str | None = Field(default="label", description="null for unlabelled data")
    sample_rows: PositiveInt | None = Field(default=None, description="seeded subsample of the input")
    seed: int = 0


class EmbeddingConfig(_Strict):
    """Sentence-transformers encoder and the Ray Data actor pool that runs it."""

    NOT_RESULTS = frozenset({"batch_size", "num_actors", "num_cpus_per_actor", "num_gpus_per_actor", "device"})

    model: str = Field(default="all-MiniLM-L6-v2", description="packaged name, local folder, or ST model id")
    batch_size: PositiveInt = 256
    num_actors: PositiveInt = 1
    num_cpus_per_actor: PositiveFloat = 1.0
    num_gpus_per_actor: NonNegativeFloat = 0.0
    device: str | None = Field(default=None, description="torch device; default cuda when a GPU is assigned")
    max_seq_length: PositiveInt | None = None


class SelectionConfig(_Strict):
    """Exploration-aware sampling: GP uncertainty over the real embeddings (paper §3.2)."""

    NOT_RESULTS = frozenset({"num_shards", "num_cpus_per_shard"})  # K shard actors give the in-process schedule

    k: PositiveInt = 9
    kernel: Literal["exponential", "rbf"] = "exponential"
    tau: PositiveFloat | Literal["auto"] = "auto"
    # Below 1e-4 the float32 state's absolute error (≈ 2.5e-6, measured) nears the smallest variances: at 1e-6 they
    # came out negative.
    noise: float = Field(default=1.0, ge=1e-4, description="observation noise σ_n²; at least 1e-4 (float32 state)")
    threshold: float = Field(default=0.1, gt=0.0, le=1.0, description=(
        "a label stops once its largest variance is below floor + threshold·(1 − floor), floor = σ_n²/(1+σ_n²)"))
    max_groups: PositiveInt = 200
    budget: Literal["average", "proportional"] = "proportional"
    gp_scope: Literal["per_label", "shared"] = Field(
        default="per_label", description="one GP per label, or one over all rows (a group lowers other labels too)")
    rule: Literal["max_variance", "density_weighted"] = Field(
        default="max_variance", description="anchor: largest variance (paper eq. 3), or variance × local density")
    engine: Literal["auto", "exact", "partitioned"] = Field(
        default="auto", description="auto: exact when its state fits max_state_gib, else partitioned")
    partition_rows: PositiveInt = Field(default=2000, description="most rows in one exact GP of the partitioned engine")
    inducing_rows: NonNegativeInt = Field(default=256, description=(
        "partitioned engine: seeded rows per scope unit whose Nyström features carry the kernel across partitions "
        "(PIC); 0 drops the cross-partition effect"))
    max_state_gib: PositiveFloat = Field(default=4.0, description="budget for the GP state (float32 V), all GPs")
    num_shards: PositiveInt = Field(default=1, description=(
        "Ray actors holding the GP partitions; per-label GPs then run on different actors at once. 1: in the tracker"))
    num_cpus_per_shard: PositiveFloat = 1.0
    seed: int = 0

    @model_validator(mode="after")
    def _partitions_hold_groups(self) -> "SelectionConfig":
        # Bisection leaves partitions of more than partition_rows / 2 rows; each must hold one group.
        if self.partition_rows < 2 * (self.k + 1):
            raise ValueError(f"selection.partition_rows={self.partition_rows} must be at least 2·(k+1) = "
                             f"{2 * (self.k + 1)}")
        return self


class SamplingConfig(_Strict):
    """vLLM sampling parameters shared by both prompting stages."""

    temperature: NonNegativeFloat = 0.7  # packaged model, text format: best AUC and MAUVE of 0.6/0.7/0.8
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: PositiveInt = 1024  # json format: prompts.char_budgets turns it into per-string limits
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0, description="vLLM's; 1.0 is off")
    seed: int = 0


class GenerationConfig(_Strict):
    """Latent attribute reasoning on a pool of vLLM generator actors (paper §3.3)."""

    NOT_RESULTS = frozenset({"num_generators", "max_in_flight", "num_gpus_per_generator", "num_cpus_per_generator",
                             "cpu_threads_bind", "cpu_kvcache_space_gib"})

    preset: str = "sst2"
    presets_file: str | None = Field(default=None, description="YAML file with user-defined presets")
    mode: Literal["two_stage", "one_stage", "simprompt"] = "two_stage"
    output_format: Literal["text", "json"] = Field(
        default="text", description="text: attribute lines, then one sample per answer continuing the group's "
                                    "numbered list (small models); json: schema-guided JSON (capable models)")
    samples_per_summary: PositiveInt = 5
    groups_per_batch: PositiveInt = 8
    num_generators: PositiveInt = 1
    max_in_flight: PositiveInt = 2
    max_retries: NonNegativeInt = 2
    model: str = Field(default="SmolLM2-135M-Instruct", description="packaged name or HF checkpoint folder")
    sampling: SamplingConfig = SamplingConfig()
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    num_gpus_per_generator: NonNegativeFloat = 0.0
    num_cpus_per_generator: PositiveFloat = 1.0
    cpu_threads_bind: str = Field(default="auto", description="VLLM_CPU_OMP_THREADS_BIND on CPU generators")
    cpu_kvcache_space_gib: PositiveInt = 2
    dedup_near_threshold: float | None = Field(default=None, gt=0.0, le=1.0)


class AlignmentConfig(_Strict):
    """Synthetic distribution alignment: MMD weights and weighted resampling (paper §3.4)."""

    NOT_RESULTS = frozenset({"num_shards"})  # the distributed fit equals the single-process one

    features: Literal["linear", "rff"] = "rff"
    projections: PositiveInt = 1000
    weighting: Literal["mmd", "importance", "both"] = "mmd"
    by_label: bool = True
    size: PositiveInt | None = Field(default=None, description="rows to resample (ζ); default: synthetic count")
    mix_real: bool = False
    # The right λ depends on the pool (λ = 0.0005 kept 68% of rows distinct on one pool, 22% on another), so by
    # default it is searched for: the smallest λ whose draw keeps min_distinct of its rows distinct (expected).
    entropy: NonNegativeFloat | Literal["auto"] = Field(
        default="auto", description="λ of the KL(ω‖uniform) diversity term; auto: searched to meet the targets")
    min_distinct: float | None = Field(default=0.5, gt=0.0, le=1.0,
                                       description="expected share of distinct rows in the draw (entropy=auto)")
    min_ess: PositiveFloat | None = Field(default=None, description="effective sample size of ω, rows (entropy=auto)")
    # 5 fits of 150 + 4·50 steps keep the search within 2.3× one fit's steps (the budget is 3×).
    search_fits: PositiveInt = Field(default=5, description="most fits the λ search runs")
    search_steps: PositiveInt = Field(default=50, description="steps of each warm-started fit after the first")
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0,
                                    description="seeded share of real rows per label kept out of the fit for metrics")
    # Defaults from jobs/studies/measure_alignment.py (SST-2 vs a skewed SST-2 dev + AG News pool): rff |Θ|=1000 by label;
    # more steps gave no better held-out numbers, and each step costs one pass over the synthetic features.
    steps: PositiveInt = 150
    learning_rate: PositiveFloat = Field(default=4.0, description="step in units of 1/L (L = 2·max‖φ‖² + λ)")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="heavy-ball momentum of the weight fit")
    num_shards: PositiveInt = 1
    seed: int = 0

    @model_validator(mode="after")
    def _check_targets(self) -> "AlignmentConfig":
        if self.entropy == "auto" and self.min_distinct is None and self.min_ess is None:
            raise ValueError("entropy=auto needs a target: set min_distinct or min_ess, or give entropy a value")
        return self


# The per-row checks in the order quality.check_rows runs them; a row's reason is the first one it fails.
QualityCheck = Literal["empty", "too_short", "too_long", "low_letter_share", "repetition", "prompt_echo",
                       "copy_of_input"]


class QualityConfig(_Strict):
    """Per-row checks that drop junk before alignment, and the set-level scores against held-out real rows."""

    filter: bool = Field(default=True, description="drop rows failing a check before alignment; false: count only")
    checks: list[QualityCheck] = Field(default_factory=lambda: list(get_args(QualityCheck)))
    # Defaults measured on real rows: 98.9% of SST-2 train pass with the sst2 preset's 192 characters (1.0% are
    # longer), 99.0% of AG News dev with agnews' 450 (0.9% longer); every issue-12 junk row fails.
    min_chars: PositiveInt = Field(default=3, description="SST-2 train: 0.02% of rows are shorter")
    max_chars: PositiveInt | None = Field(default=None, description="default: the preset's max_sample_chars")
    min_letter_share: float = Field(default=0.75, ge=0.0, le=1.0,
                                    description="letters, whitespace and prose punctuation per character")
    max_char_run: PositiveInt = Field(default=9, description="longest run of one non-space character ('baaaaaaaaad')")
    repeat_ngram: PositiveInt = Field(default=3, description="word n-gram length of the repetition check")
    max_ngram_repeat_share: float = Field(default=0.5, ge=0.0, le=1.0,
                                          description="share of words inside a word n-gram seen twice or more")
    echo_terms: list[str] = Field(default_factory=list, description="prompt/schema echoes beyond the built-in ones")
    near_copy_cosine: float = Field(default=0.95, gt=0.0, le=1.0, description="cosine counting as a near-copy")
    label_min_probability: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="label_mismatch: drop rows to whose own label a classifier fit on "
        "the input rows (never the scoring reference) gives less probability; 0 turns the check off")
    reference_path: str | None = Field(default=None, description="real rows that are not in the input, to score "
                                       "against (same format rules as data.path); default: input rows never "
                                       "shown to the generator")
    reference_rows: PositiveInt = Field(default=2000, description="seeded sample of the reference that is scored")
    seed: int = 0

    @model_validator(mode="after")
    def _check_lengths(self) -> "QualityConfig":
        if self.max_chars is not None and self.min_chars >= self.max_chars:
            raise ValueError(f"quality.min_chars ({self.min_chars}) must be below max_chars ({self.max_chars})")
        return self


class StorageConfig(_Strict):
    """S3 access; unset fields fall back to the standard AWS environment/config chain."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    anon: bool = False
    max_attempts: PositiveInt = Field(default=5, description="botocore retries (with backoff) per request")


class OutputConfig(_Strict):
    """Where results go: a local folder or s3://bucket/prefix."""

    NOT_RESULTS = frozenset({"path", "overwrite"})  # a folder may move (local -> S3) and still resume

    path: str = "synalign_output"
    rows_per_part: PositiveInt = 50_000
    overwrite: bool = False


class ResourcesConfig(_Strict):
    """How the driver reaches Ray: an existing cluster address, or a local instance of this size."""

    ray_address: str | None = Field(default=None, description="'auto' for a cluster; null starts local Ray")
    num_cpus: PositiveInt | None = None
    object_store_memory_mb: PositiveInt | None = None
    cache_dir: str | None = Field(default=None, description="model conversion cache; default ~/.cache/synalign_ray")


class SynAlignConfig(_Strict):
    """Everything one run needs; every section has defaults that run the local demo."""

    NOT_RESULTS = frozenset({"storage", "resources"})

    data: DataConfig = DataConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    selection: SelectionConfig = SelectionConfig()
    generation: GenerationConfig = GenerationConfig()
    alignment: AlignmentConfig = AlignmentConfig()
    quality: QualityConfig = QualityConfig()
    storage: StorageConfig = StorageConfig()
    output: OutputConfig = OutputConfig()
    resources: ResourcesConfig = ResourcesConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> "SynAlignConfig":
        if self.data.label_column is not None and self.data.label_column == self.data.text_column:
            raise ValueError("data.label_column must differ from data.text_column")
        return self

    def redacted(self) -> dict[str, Any]:
        """A JSON-safe dump for manifests and logs: secrets stay masked."""
        return self.model_dump(mode="json")


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<config>"
        if e["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown config key")
        else:
            parts.append(f"{key}: {e['msg']}")
    return "invalid config: " + "; ".join(parts)


def build_config(raw: dict[str, Any] | None = None, overrides: list[str] | None = None) -> SynAlignConfig:
    """Validate a nested dict (plus overrides) into a config, raising ConfigError that names the key."""
    raw = apply_overrides(dict(raw or {}), list(overrides or []))
    try:
        return SynAlignConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SynAlignConfig:
    """Read a YAML config file (optional) and apply dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {p} is not valid YAML: {yaml_error_line(err)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    return build_config(raw, overrides)
