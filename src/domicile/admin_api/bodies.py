"""The request bodies of the admin API: strict pydantic models (unknown fields refused, no
coercion: `"true"` is not a boolean). The limits are the directory's own (names 1-200
characters, retention 1-36,500 days); the services check them again."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Confirm",
    "NewApiKey",
    "NewMember",
    "NewOrg",
    "NewProject",
    "NewToken",
    "NewWorkspace",
    "OrgChange",
    "ProjectChange",
    "WorkspaceChange",
]

Name = Field(min_length=1, max_length=200)
Id = Field(min_length=1, max_length=40)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewOrg(_Body):
    name: str = Name
    training_opt_in: bool = False


class OrgChange(_Body):
    """Training consent (G7): audited, and only content written while opted in may ever be
    exported for training."""

    training_opt_in: bool


class NewProject(_Body):
    org_id: str = Id
    name: str = Name
    region: str = Field(min_length=1, max_length=16,
                        description="A configured region, or `global` with "
                                    "`per_request_residency`. Fixed forever (G1).")
    retention: Literal["zero", "regional"] | None = Field(
        default=None, description="Default: the region's `default_retention`.")
    per_request_residency: bool = False
    rpm_limit: int | None = Field(default=None, ge=1, le=2_000_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=2_000_000_000)


class ProjectChange(_Body):
    """Only what may change (a field left out stays as it is; `null` limits lift the limit);
    a `region` answers 400 `region_immutable` (G1)."""

    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="`null` or left out: unchanged.")
    rpm_limit: int | None = Field(default=None, ge=1, le=2_000_000_000)
    tpm_limit: int | None = Field(default=None, ge=1, le=2_000_000_000)


class NewApiKey(_Body):
    name: str = Field(default="default", min_length=1, max_length=200)


class NewWorkspace(_Body):
    org_id: str = Id
    name: str = Name
    region: str = Field(min_length=1, max_length=16,
                        description="A configured region. Fixed forever (G1).")


class WorkspaceChange(_Body):
    """Only what may change (a field left out stays as it is); a `region` answers 400
    `region_immutable` (G1)."""

    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="`null` or left out: unchanged.")
    retention_days: int | None = Field(
        default=None, ge=1, le=36_500,
        description="Delete conversations and files older than this; `null`: keep content "
                    "until it is deleted.")


class NewMember(_Body):
    email: str = Field(min_length=3, max_length=320)
    role: Literal["owner", "admin", "member"]
    password: str = Field(min_length=8, max_length=1024)


class NewToken(_Body):
    user_id: str = Id
    expires_days: int | None = Field(default=None, ge=1, le=3650)


class Confirm(_Body):
    confirm: bool = Field(description="Must be `true`: an erasure cannot be undone.")
