"""Placeholder: the quota routes are written by the quota area (this file is replaced)."""

from fastapi import APIRouter

router = APIRouter()
