"""Request schemas shared by the OpenAI endpoints: validate what the gateway needs, keep everything else.

Every model allows extra fields: vLLM's own sampling fields, tools, response_format and future OpenAI fields
pass through untouched (the gateway forwards the client's JSON, not a re-serialisation of these models).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class SamplingFields(_Open):
    model: str = Field(min_length=1, max_length=256)
    stream: Optional[bool] = False
    n: Optional[int] = Field(None, ge=1, le=128)
    max_tokens: Optional[int] = Field(None, ge=1, le=1_000_000)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    logprobs: Optional[Union[bool, int]] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream_options: Optional[dict[str, Any]] = None
    user: Optional[str] = None


class ContentPart(_Open):
    type: str = Field(min_length=1)
    text: Optional[str] = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=1_000_000)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    response_format: Optional[dict[str, Any]] = None


class CompletionRequest(SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = Field(None, ge=1, le=128)


class ResponseInputItem(_Open):
    """One item of a Responses `input` list: a message (`role` + `content`) or another item type
    (`function_call_output`, `item_reference`, ...), which passes through unread."""
    type: Optional[str] = None
    role: Optional[Literal["system", "developer", "user", "assistant"]] = None
    content: Optional[Union[str, list[ContentPart]]] = None


class ResponsesRequest(_Open):
    """OpenAI Responses API (`client.responses.create`)."""
    model: str = Field(min_length=1, max_length=256)
    input: Union[str, list[ResponseInputItem]]
    instructions: Optional[str] = None
    stream: Optional[bool] = False
    max_output_tokens: Optional[int] = Field(None, ge=1, le=1_000_000)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    text: Optional[dict[str, Any]] = None
    previous_response_id: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None
    user: Optional[str] = None
