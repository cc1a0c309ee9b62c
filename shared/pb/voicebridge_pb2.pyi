from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TurnRequest(_message.Message):
    __slots__ = ("turn_id", "call_sid", "seq", "kind", "text", "confidence", "from_number", "to_number", "reply_to", "deadline_unix_ms", "created_unix_ms", "call_status", "digits", "stream", "heard", "heard_ms", "keypad", "route", "outbound", "answered_by", "context_json")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[TurnRequest.Kind]
        CALL_START: _ClassVar[TurnRequest.Kind]
        SPEECH: _ClassVar[TurnRequest.Kind]
        CALL_END: _ClassVar[TurnRequest.Kind]
        DTMF: _ClassVar[TurnRequest.Kind]
        TRANSFER_FAILED: _ClassVar[TurnRequest.Kind]
    KIND_UNSPECIFIED: TurnRequest.Kind
    CALL_START: TurnRequest.Kind
    SPEECH: TurnRequest.Kind
    CALL_END: TurnRequest.Kind
    DTMF: TurnRequest.Kind
    TRANSFER_FAILED: TurnRequest.Kind
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_SID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TO_NUMBER_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    CALL_STATUS_FIELD_NUMBER: _ClassVar[int]
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    HEARD_FIELD_NUMBER: _ClassVar[int]
    HEARD_MS_FIELD_NUMBER: _ClassVar[int]
    KEYPAD_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    OUTBOUND_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_JSON_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    call_sid: str
    seq: int
    kind: TurnRequest.Kind
    text: str
    confidence: float
    from_number: str
    to_number: str
    reply_to: str
    deadline_unix_ms: int
    created_unix_ms: int
    call_status: str
    digits: str
    stream: bool
    heard: str
    heard_ms: int
    keypad: bool
    route: str
    outbound: bool
    answered_by: str
    context_json: str
    def __init__(self, turn_id: _Optional[str] = ..., call_sid: _Optional[str] = ..., seq: _Optional[int] = ..., kind: _Optional[_Union[TurnRequest.Kind, str]] = ..., text: _Optional[str] = ..., confidence: _Optional[float] = ..., from_number: _Optional[str] = ..., to_number: _Optional[str] = ..., reply_to: _Optional[str] = ..., deadline_unix_ms: _Optional[int] = ..., created_unix_ms: _Optional[int] = ..., call_status: _Optional[str] = ..., digits: _Optional[str] = ..., stream: _Optional[bool] = ..., heard: _Optional[str] = ..., heard_ms: _Optional[int] = ..., keypad: _Optional[bool] = ..., route: _Optional[str] = ..., outbound: _Optional[bool] = ..., answered_by: _Optional[str] = ..., context_json: _Optional[str] = ...) -> None: ...

class Option(_message.Message):
    __slots__ = ("label", "value")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    label: str
    value: str
    def __init__(self, label: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class TurnReply(_message.Message):
    __slots__ = ("turn_id", "call_sid", "seq", "say", "hangup", "options", "fallback", "part", "more", "text", "transfer_to", "language")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_SID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SAY_FIELD_NUMBER: _ClassVar[int]
    HANGUP_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_TO_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    turn_id: str
    call_sid: str
    seq: int
    say: _containers.RepeatedScalarFieldContainer[str]
    hangup: bool
    options: _containers.RepeatedCompositeFieldContainer[Option]
    fallback: bool
    part: int
    more: bool
    text: str
    transfer_to: str
    language: str
    def __init__(self, turn_id: _Optional[str] = ..., call_sid: _Optional[str] = ..., seq: _Optional[int] = ..., say: _Optional[_Iterable[str]] = ..., hangup: _Optional[bool] = ..., options: _Optional[_Iterable[_Union[Option, _Mapping]]] = ..., fallback: _Optional[bool] = ..., part: _Optional[int] = ..., more: _Optional[bool] = ..., text: _Optional[str] = ..., transfer_to: _Optional[str] = ..., language: _Optional[str] = ...) -> None: ...

class DeliverAck(_message.Message):
    __slots__ = ("accepted", "stop")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    stop: bool
    def __init__(self, accepted: _Optional[bool] = ..., stop: _Optional[bool] = ...) -> None: ...
