"""Policies: multimodal LLMs that write responses (POLICIES registry)."""

from .base import BasePolicy
from .prompts import PROMPT_TEMPLATES, ParsedResponse, build_prompt_text, parse_think_response
from .qwen2_5_vl import Qwen25VLPolicy, ensure_tiny_qwen2_5_vl

__all__ = [
    "BasePolicy", "Qwen25VLPolicy", "ensure_tiny_qwen2_5_vl", "PROMPT_TEMPLATES",
    "ParsedResponse", "build_prompt_text", "parse_think_response",
]
