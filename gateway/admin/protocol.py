from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: router directory to load; default: the configured router.path
    path: Optional[str] = Field(None, min_length=1, max_length=4096)


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(min_length=1, max_length=4096)
    description: str = Field("", max_length=1000)


class CandidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: an adapter already loaded into vLLM (by `forgetless audit --candidate`), to be scored through the gateway
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
