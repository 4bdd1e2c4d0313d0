"""The pipeline configuration: one typed YAML document, validated once at start-up.

Every service reads the same file (``autoannotator <service> --config pipeline.yaml``). Unknown
or ill-typed fields fail with :class:`ConfigError`, whose message names the field by its dotted
path (``voter.eps: Input should be less than or equal to 1``). Secrets never live in the file:
the file names the environment variable that holds them (``api_key_env``), and the Kafka
bootstrap servers may come from ``AUTOANNOTATOR_KAFKA_BOOTSTRAP``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autoannotator.exceptions import ConfigError

BOOTSTRAP_ENV = "AUTOANNOTATOR_KAFKA_BOOTSTRAP"


class Section(BaseModel):
    """Base of every config section: unknown fields are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(Section):
    """What is being annotated: the label set, in the order every probability vector uses."""

    name: str = "task"
    description: str = ""
    labels: list[str] = Field(min_length=2)
    label_descriptions: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if len({label.strip().lower() for label in labels}) != len(labels):
            raise ValueError("labels must be unique (case-insensitively)")
        if any(not label.strip() for label in labels):
            raise ValueError("labels must not be empty strings")
        return labels

    @model_validator(mode="after")
    def _descriptions_known(self) -> TaskConfig:
        unknown = set(self.label_descriptions) - set(self.labels)
        if unknown:
            raise ValueError(f"label_descriptions names labels not in labels: {sorted(unknown)}")
        return self


class KafkaSecurity(Section):
    """Passed through to librdkafka; the password comes from the named environment variable."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None


DEFAULT_TOPIC_PREFIX = "aa."


class KafkaConfig(Section):
    """Where the topics live and how the services talk to the broker."""

    # None: $AUTOANNOTATOR_KAFKA_BOOTSTRAP, else the embedded broker.
    bootstrap_servers: str | None = None
    topic_prefix: str = DEFAULT_TOPIC_PREFIX
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    exactly_once: bool = False
    # The embedded broker holds a group join for about session.timeout.ms / 2 (ENVIRONMENT.md).
    session_timeout_ms: int = Field(default=6000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # How a consumer group spreads partitions over replicas. cooperative-sticky moves only the
    # partitions that must move on a rebalance, and the others keep flowing (KIP-429; the assignor
    # runs in the clients); range or roundrobin stop the whole group at every rebalance. Use
    # cooperative-sticky on Apache Kafka; range stays the default because groups on the embedded
    # broker were seen stuck after a SIGKILLed member under cooperative-sticky (README). Every
    # replica of a service must use the same strategy.
    assignment_strategy: Literal["cooperative-sticky", "range", "roundrobin"] = "range"
    consume_batch: int = Field(default=500, ge=1)
    consume_timeout_s: float = Field(default=0.2, gt=0)
    security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    # Every producer's compression.type (consumers decompress whatever they get).
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    # Extra librdkafka properties for every client, e.g. {"compression.type": "zstd"}.
    extra: dict[str, str | int | float | bool] = Field(default_factory=dict)

    def topic(self, name: str) -> str:
        """The full topic name for one of the pipeline's logical topics."""
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        """The consumer group of a service, derived from the topic prefix so two installs never share one.

        The default prefix keeps the historical names (``autoannotator-voter``); any other prefix is
        prepended (``team-a.`` gives ``team-a.autoannotator-voter``), so one prefixed ACL covers
        both an install's topics and its groups.
        """
        base = f"autoannotator-{name}"
        return base if self.topic_prefix == DEFAULT_TOPIC_PREFIX else f"{self.topic_prefix}{base}"


class InputConfig(Section):
    """How records on the ``texts`` topic are encoded and which are too large to label."""

    format: Literal["protobuf", "json", "text"] = "protobuf"
    max_text_bytes: int = Field(default=65_536, ge=1)


class OutputConfig(Section):
    """How ``labels`` and ``rejected`` are encoded for outside consumers (other topics stay protobuf)."""

    # json: one JSON object per message (field names as in records.proto), readable with json.loads alone.
    format: Literal["protobuf", "json"] = "protobuf"


class StoreConfig(Section):
    """The model store: ``file://`` path or any fsspec URI (``s3://bucket/prefix``)."""

    uri: str = "file://./.autoannotator/models"
    # fsspec storage options, e.g. {"endpoint_url": "http://127.0.0.1:5000"} for S3-compatible stores.
    options: dict[str, Any] = Field(default_factory=dict)


class MetricsConfig(Section):
    """Where each service serves ``/metrics``, ``/healthz`` and ``/readyz``."""

    host: str = "127.0.0.1"
    # 0 picks a free port (logged at start); each service may override with --metrics-port.
    port: int = Field(default=0, ge=0, le=65535)


class SpecialistConfig(Section):
    """One small classifier serving the ``texts`` topic."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    max_length: int = Field(default=128, ge=8, le=4096)
    # A batch closes at this many tokens (padded length x records) or max_batch_size records.
    max_batch_tokens: int = Field(default=8192, ge=64)
    max_batch_size: int = Field(default=64, ge=1)
    max_wait_ms: int = Field(default=20, ge=0)
    # auto: TensorRT, then CUDA, then CPU (each fallback logged); tensorrt: TensorRT, then CUDA, never CPU.
    provider: Literal["auto", "tensorrt", "cuda", "cpu"] = "auto"
    threads: int = Field(default=0, ge=0)
    # TensorRT engine and timing caches (per model sha256); empty: the artifact's own trt-cache/ folder,
    # which a fetched release deletes on retirement, so set a persistent folder to reuse engines across restarts.
    tensorrt_cache_dir: str = ""
    # Run inference in a second thread, so the next batch is decoded and tokenized while this one runs.
    overlap: bool = True
    int8: bool = False
    # Model's own label -> task label; overrides the manifest's label_map when given.
    label_map: dict[str, str] = Field(default_factory=dict)
    # Copy the text into every prediction (the format before lean predictions). False: a prediction
    # carries id, specialist, version, probabilities, status and the text's source offset, and the
    # voter reads each text once from `texts`.
    include_text: bool = False


class VoterConfig(Section):
    """How k predictions become one decision (DESIGN.md, "Routing")."""

    # error-bounded: the lowest threshold on the calibrated mean probability whose upper confidence
    # bound on accepted-label error, measured on the audit stream, is <= target_error.
    policy: Literal["vote", "soft", "error-bounded"] = "error-bounded"
    # vote: accept when U = 1 - max_votes/k < eps.
    eps: float = Field(default=0.34, gt=0, le=1)
    # soft: accept when the top mean probability >= tau.
    tau: float = Field(default=0.8, ge=0, le=1)
    # error-bounded: the highest error of auto-accepted labels the user accepts.
    target_error: float = Field(default=0.05, gt=0, lt=1)
    # Confidence of the upper bound (exact Clopper-Pearson), and the fewest audit samples above a
    # threshold before it can be certified; with fewer, every record goes to review. The scan stops
    # at the first threshold that fails, so the first test decides everything: at 30 samples a
    # reviewer that errs 8 % makes 3 chance disagreements (bound 0.24) and fails a 0.2 target, and
    # a target of 0.05 cannot pass below 59 samples even with no error. 100 is the default.
    bound_confidence: float = Field(default=0.95, ge=0.5, lt=1)
    min_audit_samples: int = Field(default=100, ge=1)
    # Audit outcomes kept per set of serving model versions (a sliding window).
    audit_window: int = Field(default=2000, ge=10)
    # Share of the records consensus would accept that go to review anyway (hash of the id), under
    # every policy: the unbiased sample that measures how right consensus is.
    audit_rate: float = Field(default=0.03, ge=0, le=1)
    # Temperatures per specialist and model version ({specialist: {version: T}}); a temperature is
    # never applied to another version. Releases carry the temperatures the trainer fits.
    temperatures: dict[str, dict[str, float]] = Field(default_factory=dict)
    join_timeout_s: float = Field(default=30.0, gt=0)
    # After join_timeout, decide with this many predictions; fewer go to hard.
    quorum: int = Field(default=2, ge=1)
    # Decided ids remembered per partition, so late or duplicate predictions are ignored.
    remember_decided: int = Field(default=10_000, ge=1)

    @field_validator("temperatures", mode="before")
    @classmethod
    def _per_version(cls, temps: Any) -> Any:
        if isinstance(temps, dict):
            for name, value in temps.items():
                if not isinstance(value, dict):
                    raise ValueError(
                        f"temperatures.{name}: give one temperature per model version, e.g. {{{name}: {{v1: 1.3}}}}; "
                        "a temperature fitted for one version is never applied to another"
                    )
        return temps

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, temps: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        bad = {f"{k}.{v}": t for k, versions in temps.items() for v, t in versions.items() if t <= 0}
        if bad:
            raise ValueError(f"temperatures must be > 0: {bad}")
        return temps


class LLMPrice(Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class LLMConfig(Section):
    """An OpenAI-compatible chat-completions endpoint."""

    # Overridden by $AUTOANNOTATOR_LLM_URL when set.
    base_url: str = "http://127.0.0.1:8900/v1"
    model: str = "gpt-4o-mini"
    # Name of the environment variable that holds the API key (never the key itself).
    api_key_env: str = "AUTOANNOTATOR_LLM_API_KEY"
    batch_size: int = Field(default=10, ge=1, le=200)
    concurrency: int = Field(default=8, ge=1, le=256)
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    # Rounds of re-asking for ids whose answer was missing or outside the label set.
    max_label_attempts: int = Field(default=3, ge=1)
    response_format: bool = True
    temperature: float = Field(default=0.0, ge=0, le=2)
    # Model name -> price; the reviewer prices every response's usage with it.
    prices: dict[str, LLMPrice] = Field(default_factory=dict)
    # Open the circuit after this many consecutive failed requests; probe again after the cooldown.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    # Exponential backoff between retries (with jitter), unless the server names a Retry-After.
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=8.0, gt=0)
    # A Retry-After longer than this is ignored in favour of the backoff (as openai-python does).
    max_retry_after_s: float = Field(default=60.0, gt=0)


class BudgetConfig(Section):
    """Spend limits; when reached the reviewer pauses consumption (records wait in Kafka)."""

    max_usd_per_hour: float | None = Field(default=None, gt=0)
    max_usd_total: float | None = Field(default=None, gt=0)
    # True: the limits hold for every reviewer replica together; spend goes to the compacted
    # `spend` topic, which each replica sums. False: each replica keeps its own (SQLite).
    shared: bool = True
    # This replica's name on the spend topic; default <host name>-<pid> (a pod's name in Kubernetes).
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class PromptConfig(Section):
    """What the LLM is told; the version is part of the cache key."""

    version: str = "v1"
    instructions: str = ""
    examples: list[dict[str, str]] = Field(default_factory=list)


class HumanReviewConfig(Section):
    """The review page served by the reviewer."""

    host: str = "127.0.0.1"
    port: int = Field(default=8901, ge=0, le=65535)
    # Name of the environment variable holding the access token.
    token_env: str = "AUTOANNOTATOR_REVIEW_TOKEN"
    queue_path: str = "./.autoannotator/review-queue.sqlite"
    max_failed_logins_per_minute: int = Field(default=10, ge=1)
    # A label can be undone for this long before it flows out to `labels` and `reviewed`.
    undo_window_s: float = Field(default=10.0, ge=0)
    # Per-person tokens: a file (e.g. a mounted Secret) of `name token [admin]` lines. Without it,
    # the single token in `token_env` is accepted as the person `human` (logged as a warning).
    tokens_file: str | None = None
    # Hash-chosen share of queued records that a second person labels too (agreement, Cohen's kappa).
    overlap: float = Field(default=0.0, ge=0, le=1)
    # HTTPS for the page itself (both or neither); otherwise terminate TLS at an ingress.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> HumanReviewConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise ValueError(f"{missing}: set tls_cert_file and tls_key_file together")
        return self


class ReviewerConfig(Section):
    """Secondary review of hard records."""

    mode: Literal["llm", "human", "llm+human"] = "llm"
    llm: LLMConfig = Field(default_factory=LLMConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    human: HumanReviewConfig = Field(default_factory=HumanReviewConfig)
    # Hash-chosen share of LLM-labelled records also queued for a person: measures the LLM itself.
    human_audit_rate: float = Field(default=0.0, ge=0, le=1)
    cache_path: str | None = "./.autoannotator/llm-cache.sqlite"
    # Undecided records held in memory (waiting for one of llm.concurrency request slots, or in
    # flight) before consumption pauses; the rest wait in Kafka.
    max_pending: int = Field(default=2000, ge=1)


class ColdStartConfig(Section):
    """The first version of a specialist with none in the store, built by the trainer on reviewed records."""

    # The packaged all-MiniLM-L6-v2 ("minilm") or a local Hugging Face folder; never downloaded.
    base: str = "minilm"
    # A fresh classification head needs more steps, at a higher rate, than a fine-tune of a trained one.
    steps: int = Field(default=200, ge=1)
    learning_rate: float = Field(default=5e-5, gt=0)


class TrainerConfig(Section):
    """Continual fine-tuning on reviewed hard samples (defaults from the paper)."""

    enabled: bool = True
    beta: int = Field(default=2000, ge=1)
    learning_rate: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=16, ge=1)
    # Upper bound on optimiser steps per round (None: epochs decide).
    max_steps: int | None = Field(default=None, ge=1)
    # Older reviewed samples mixed in, as a fraction of the new ones.
    replay_fraction: float = Field(default=0.5, ge=0)
    # Share of reviewed samples held out for the promotion gate (never trained on).
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Share of AUDIT samples held out (the same hash as holdout_fraction).
    # The held-out audit samples are what the voter seeds a new version set's window from, and
    # what the gate estimates the LLM share on: with too few, a promoted set starts uncertified
    # and sends everything to review until the live audit stream certifies it again. Audit samples
    # are a small part of what trains the specialists (mostly the hard records); 0.5 by default.
    # Records no model voted on (a cold start) are held out at holdout_fraction: they are what the
    # first versions are built from.
    audit_holdout_fraction: float = Field(default=0.5, gt=0, lt=1)
    # Promote when candidate accuracy >= current accuracy - margin.
    margin: float = Field(default=0.0, ge=0, le=1)
    pool_path: str = "./.autoannotator/pool.sqlite"
    seed: int = 0
    # Where fine-tuning runs: auto = CUDA when torch sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # On CUDA: autocast (bf16 where supported, else fp16 with a grad scaler).
    mixed_precision: bool = True
    # On CPU the training thread runs at this niceness and with this many torch threads (0: half
    # the cores, at least 1), so the specialists' inference keeps most of the machine.
    nice: int = Field(default=10, ge=0, le=19)
    threads: int = Field(default=0, ge=0)
    # Cold start (no model in the store yet): how the first version is built.
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)


class PipelineConfig(Section):
    """The whole pipeline: the one document every service validates at start-up."""

    task: TaskConfig
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    specialists: list[SpecialistConfig] = Field(default_factory=list)
    voter: VoterConfig = Field(default_factory=VoterConfig)
    reviewer: ReviewerConfig = Field(default_factory=ReviewerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    data_dir: str = "./.autoannotator"

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        names = [s.name for s in self.specialists]
        if len(set(names)) != len(names):
            raise ValueError(f"specialists: duplicate names {names}")
        labels = set(self.task.labels)
        for i, spec in enumerate(self.specialists):
            stray = set(spec.label_map.values()) - labels
            if stray:
                raise ValueError(f"specialists.{i}.label_map maps onto labels not in task.labels: {sorted(stray)}")
        if self.specialists and self.voter.quorum > len(self.specialists):
            raise ValueError(f"voter.quorum ({self.voter.quorum}) exceeds the number of specialists ({len(names)})")
        unknown = set(self.voter.temperatures) - set(names)
        if unknown:
            raise ValueError(f"voter.temperatures names unknown specialists: {sorted(unknown)}")
        return self

    def specialist(self, name: str) -> SpecialistConfig:
        """The named specialist's section."""
        for spec in self.specialists:
            if spec.name == name:
                return spec
        raise ConfigError(f"specialists: no specialist named {name!r} (have {[s.name for s in self.specialists]})")

    def bootstrap_servers(self) -> str | None:
        """Configured bootstrap servers; the environment wins over the file."""
        return os.environ.get(BOOTSTRAP_ENV) or self.kafka.bootstrap_servers


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def parse_config(data: Any, source: str = "<config>") -> PipelineConfig:
    """Validate a parsed YAML/JSON document; errors name every offending field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{_field_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{source}: invalid config\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))


def dump_config(config: PipelineConfig) -> str:
    """The config as YAML, with defaults written out (what ``plan`` and ``calibrate`` write)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
