from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_STATUS_UNSPECIFIED: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_OK: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_BAD_INPUT: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_ERROR: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_NO_MODEL: _ClassVar[PredictionStatus]

class LabelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_SOURCE_UNSPECIFIED: _ClassVar[LabelSource]
    LABEL_SOURCE_CONSENSUS: _ClassVar[LabelSource]
    LABEL_SOURCE_LLM: _ClassVar[LabelSource]
    LABEL_SOURCE_HUMAN: _ClassVar[LabelSource]
PREDICTION_STATUS_UNSPECIFIED: PredictionStatus
PREDICTION_STATUS_OK: PredictionStatus
PREDICTION_STATUS_BAD_INPUT: PredictionStatus
PREDICTION_STATUS_ERROR: PredictionStatus
PREDICTION_STATUS_NO_MODEL: PredictionStatus
LABEL_SOURCE_UNSPECIFIED: LabelSource
LABEL_SOURCE_CONSENSUS: LabelSource
LABEL_SOURCE_LLM: LabelSource
LABEL_SOURCE_HUMAN: LabelSource

class TextRecord(_message.Message):
    __slots__ = ("id", "text", "meta", "created_ms")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    text: str
    meta: _containers.ScalarMap[str, str]
    created_ms: int
    def __init__(self, id: _Optional[str] = ..., text: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ..., created_ms: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("record_id", "specialist", "model_version", "probs", "labels", "status", "reason", "record", "raw", "latency_ms", "produced_ms", "source_topic", "source_partition", "source_offset", "detail", "text_sha256")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SPECIALIST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PRODUCED_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    specialist: str
    model_version: str
    probs: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    status: PredictionStatus
    reason: str
    record: TextRecord
    raw: bytes
    latency_ms: float
    produced_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    detail: str
    text_sha256: str
    def __init__(self, record_id: _Optional[str] = ..., specialist: _Optional[str] = ..., model_version: _Optional[str] = ..., probs: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ..., status: _Optional[_Union[PredictionStatus, str]] = ..., reason: _Optional[str] = ..., record: _Optional[_Union[TextRecord, _Mapping]] = ..., raw: _Optional[bytes] = ..., latency_ms: _Optional[float] = ..., produced_ms: _Optional[int] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., detail: _Optional[str] = ..., text_sha256: _Optional[str] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("specialist", "model_version", "label", "confidence")
    SPECIALIST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    specialist: str
    model_version: str
    label: str
    confidence: float
    def __init__(self, specialist: _Optional[str] = ..., model_version: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ...) -> None: ...

class Cost(_message.Message):
    __slots__ = ("model", "prompt_tokens", "completion_tokens", "usd", "cached")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    USD_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt_tokens: int
    completion_tokens: int
    usd: float
    cached: bool
    def __init__(self, model: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., usd: _Optional[float] = ..., cached: _Optional[bool] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("record_id", "record", "label", "confidence", "source", "votes", "model_versions", "cost", "uncertainty", "decided_ms", "decided_by", "audit", "revision", "decided_for")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DECIDED_FOR_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    record: TextRecord
    label: str
    confidence: float
    source: LabelSource
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    model_versions: _containers.ScalarMap[str, str]
    cost: Cost
    uncertainty: float
    decided_ms: int
    decided_by: str
    audit: bool
    revision: int
    decided_for: str
    def __init__(self, record_id: _Optional[str] = ..., record: _Optional[_Union[TextRecord, _Mapping]] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., source: _Optional[_Union[LabelSource, str]] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., uncertainty: _Optional[float] = ..., decided_ms: _Optional[int] = ..., decided_by: _Optional[str] = ..., audit: _Optional[bool] = ..., revision: _Optional[int] = ..., decided_for: _Optional[str] = ...) -> None: ...

class HardSample(_message.Message):
    __slots__ = ("record_id", "record", "predictions", "uncertainty", "reason", "labels", "routed_ms", "audit", "consensus_label", "score")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ROUTED_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    record: TextRecord
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    uncertainty: float
    reason: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    routed_ms: int
    audit: bool
    consensus_label: str
    score: float
    def __init__(self, record_id: _Optional[str] = ..., record: _Optional[_Union[TextRecord, _Mapping]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., uncertainty: _Optional[float] = ..., reason: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., routed_ms: _Optional[int] = ..., audit: _Optional[bool] = ..., consensus_label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ReviewedSample(_message.Message):
    __slots__ = ("record_id", "record", "label", "source", "predictions", "reviewer", "reviewed_ms", "audit", "consensus_label", "score", "revision")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_MS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    record: TextRecord
    label: str
    source: LabelSource
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    reviewer: str
    reviewed_ms: int
    audit: bool
    consensus_label: str
    score: float
    revision: int
    def __init__(self, record_id: _Optional[str] = ..., record: _Optional[_Union[TextRecord, _Mapping]] = ..., label: _Optional[str] = ..., source: _Optional[_Union[LabelSource, str]] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., reviewer: _Optional[str] = ..., reviewed_ms: _Optional[int] = ..., audit: _Optional[bool] = ..., consensus_label: _Optional[str] = ..., score: _Optional[float] = ..., revision: _Optional[int] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("record_id", "record", "raw", "reason", "detail", "stage", "rejected_ms", "text_sha256", "kept_text_sha256")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    KEPT_TEXT_SHA256_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    record: TextRecord
    raw: bytes
    reason: str
    detail: str
    stage: str
    rejected_ms: int
    text_sha256: str
    kept_text_sha256: str
    def __init__(self, record_id: _Optional[str] = ..., record: _Optional[_Union[TextRecord, _Mapping]] = ..., raw: _Optional[bytes] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., stage: _Optional[str] = ..., rejected_ms: _Optional[int] = ..., text_sha256: _Optional[str] = ..., kept_text_sha256: _Optional[str] = ...) -> None: ...

class ModelRelease(_message.Message):
    __slots__ = ("specialist", "version", "artifact_uri", "sha256", "model_labels", "label_map", "metrics", "parent_version", "created_ms", "kind", "temperature", "holdout")
    class LabelMapEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SPECIALIST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_MAP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    HOLDOUT_FIELD_NUMBER: _ClassVar[int]
    specialist: str
    version: str
    artifact_uri: str
    sha256: str
    model_labels: _containers.RepeatedScalarFieldContainer[str]
    label_map: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    parent_version: str
    created_ms: int
    kind: str
    temperature: float
    holdout: _containers.RepeatedCompositeFieldContainer[HeldOutPrediction]
    def __init__(self, specialist: _Optional[str] = ..., version: _Optional[str] = ..., artifact_uri: _Optional[str] = ..., sha256: _Optional[str] = ..., model_labels: _Optional[_Iterable[str]] = ..., label_map: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., parent_version: _Optional[str] = ..., created_ms: _Optional[int] = ..., kind: _Optional[str] = ..., temperature: _Optional[float] = ..., holdout: _Optional[_Iterable[_Union[HeldOutPrediction, _Mapping]]] = ...) -> None: ...

class HeldOutPrediction(_message.Message):
    __slots__ = ("record_id", "label", "probs")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    label: str
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, record_id: _Optional[str] = ..., label: _Optional[str] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class Spend(_message.Message):
    __slots__ = ("replica", "window_start_s", "usd", "requests", "updated_ms")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_S_FIELD_NUMBER: _ClassVar[int]
    USD_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    window_start_s: int
    usd: float
    requests: int
    updated_ms: int
    def __init__(self, replica: _Optional[str] = ..., window_start_s: _Optional[int] = ..., usd: _Optional[float] = ..., requests: _Optional[int] = ..., updated_ms: _Optional[int] = ...) -> None: ...
