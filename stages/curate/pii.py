"""PII detection and redaction: which spans of a text are an email, a phone number, a card, an IP, an API key.

A shared module, not a stage: the moderation rules (:mod:`stages.curate.rules`, used by moderate and
synthesize) drop or redact records with it. It uses presidio-analyzer's pattern recognizers directly (email,
phone via python-phonenumbers, credit card with Luhn check, IP) plus an API-key recognizer defined here,
without ``AnalyzerEngine`` (which would load a spaCy model), and offline: presidio's email recognizer
validates domains with ``tldextract``, whose default extractor downloads the public-suffix list on first use;
here it runs on tldextract's bundled snapshot. Loopback, unspecified, link-local and multicast IPs
(``127.0.0.1``, ``0.0.0.0``, ``::``) name no one and are left alone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import cache
from typing import Any

# entity name in params -> (presidio entity type, replacement tag)
PII_TAGS: dict[str, tuple[str, str]] = {
    "email": ("EMAIL_ADDRESS", "<EMAIL>"),
    "phone": ("PHONE_NUMBER", "<PHONE>"),
    "credit_card": ("CREDIT_CARD", "<CREDIT_CARD>"),
    "ip_address": ("IP_ADDRESS", "<IP_ADDRESS>"),
    "api_key": ("API_KEY", "<API_KEY>"),
}


@cache
def _recognizers() -> dict[str, Any]:
    """Presidio pattern recognizers per entity name, offline (see the module docstring)."""
    import regex
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    # The bundled public-suffix snapshot, no cache directory, no download.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    class PersonalIpRecognizer(IpRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            try:
                ip = ipaddress.ip_interface(pattern_text).ip
            except ValueError:
                return True
            return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast

    class ApiKeyRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            # a secret mixes letters and digits; "YOUR_API_KEY_HERE" and "tokenizer_config" are not secrets
            return bool(re.search(r"\d", pattern_text) and re.search(r"[A-Za-z]", pattern_text))

    api_key = ApiKeyRecognizer(
        supported_entity="API_KEY",
        name="ApiKeyRecognizer",
        patterns=[
            Pattern("openai/anthropic", r"\bsk-(?:proj-|svcacct-|ant-)?[A-Za-z0-9_-]{20,}", 0.9),
            Pattern("aws access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
            Pattern("github", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b", 0.9),
            Pattern("huggingface", r"\bhf_[A-Za-z0-9]{30,}\b", 0.9),
            Pattern("slack", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", 0.9),
            Pattern("google", r"\bAIza[0-9A-Za-z_-]{35}", 0.9),
            Pattern("stripe", r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}", 0.9),
            Pattern("private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----", 0.9),
            # a long value assigned to a secret-looking name: api_key = "...", "token": "..."
            Pattern(
                "assigned secret",
                r"(?i:(?<=\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)"
                r"[\"']?\s*[:=]\s*[\"']?))[A-Za-z0-9_\-+/=]{20,}",
                0.6,
            ),
        ],
        # case matters for key prefixes (AKIA, ghp_); presidio's default adds IGNORECASE
        global_regex_flags=regex.DOTALL | regex.MULTILINE,
    )
    return {
        "email": OfflineEmailRecognizer(),
        "phone": PhoneRecognizer(),
        "credit_card": CreditCardRecognizer(),
        "ip_address": PersonalIpRecognizer(),
        "api_key": api_key,
    }


def find_pii(text: str, entities: Iterable[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping PII spans (start, end, entity name) in `text`, in text order.

    Where spans of two recognizers overlap, the higher score wins, then the longer span (a Luhn-valid
    card number beats the phone number it also looks like).
    """
    recognizers = _recognizers()
    found: list[tuple[float, int, int, str]] = []
    for name in entities:
        rec = recognizers[name]
        for r in rec.analyze(text, rec.supported_entities):
            found.append((r.score, r.start, r.end, name))
    found.sort(key=lambda f: (-f[0], -(f[2] - f[1]), f[1], f[3]))
    taken: list[tuple[int, int, str]] = []
    for _, start, end, name in found:
        if all(end <= s or start >= e for s, e, _ in taken):
            taken.append((start, end, name))
    return sorted(taken)


def redact(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each span replaced by its entity's tag (<EMAIL>, <PHONE>, ...)."""
    for start, end, name in sorted(spans, reverse=True):
        text = text[:start] + PII_TAGS[name][1] + text[end:]
    return text
