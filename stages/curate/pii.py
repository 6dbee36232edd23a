"""PII detection and redaction: which spans of a text are plausibly a real person's email, phone, card, IP, key.

A shared module, not a stage: the moderation rules (:mod:`stages.curate.rules`) drop or redact with it.
Precision comes first: a false positive turns a right answer into a wrong one ("built between 1631 and <PHONE>").
Detectors are regexes plus a validation step each, offline (email suffixes: tldextract's bundled snapshot).

What is left alone, because it names no one:

* phone: fewer than 7 or more than 15 digits; a plain digit run with no separators unless a phone word
  (phone, tel, call, mobile, cell, fax, contact, whatsapp, sms) is within 40 characters before it; part of a
  longer number or decimal (a digit, ``.`` or ``,`` next to it); a number followed by a unit (km, ounces,
  %, ...); a grouped shape other than NANP ``(415) 867-5309`` / ``415-867-5309`` without a leading ``+`` or
  a phone word; a number right after an organisation (police department, hotline, office, ...); NANP
  numbers that python-phonenumbers calls invalid; fictitious numbers (555 as exchange or area code, a
  123-4567 line, 123-456-7890, one repeated digit, ascending digits, leading 000, the UK's drama ranges
  such as 020 7946 0xxx); toll-free NANP numbers (800, 888, ...: businesses and hotlines, not people); a
  number right after a business (a bank branch, a reservations line, customer support, an Inc. or LLC).
* credit_card: not 13-19 digits, Luhn-invalid, not starting 2-6 (the card networks), only 0/1 (binary),
  part of a longer digit run or decimal, contiguous digits without a card word (card, visa, mastercard,
  amex, credit, debit, payment) before it, published test numbers (4111 1111 1111 1111, ...), three or
  fewer distinct digits.
* email: reserved domains (RFC 2606/6761: example.com/.net/.org, *.example, *.test, *.invalid,
  *.localhost, *.local), placeholder domains (domain.com, company.com, example2.com, ...), placeholder
  mailboxes (you@, your.email@, my_gmail_address@, email123@, john.doe@, ...), an organisation's role or
  campaign mailbox (info@, support@, promotions@, customer.service@, noreply-alerts@, orders@, ...), a public
  submission inbox ("send your photos to ...", "write to ..."), and a domain whose suffix is not a public
  suffix (``icon@2x.png``).
* ip_address: anything not globally routable (private 10/8, 172.16/12, 192.168/16, loopback, link-local,
  shared 100.64/10, documentation 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32), multicast,
  version strings (``v1.2.3.4``), an address after server, dns, ntp, resolver, gateway, proxy or ping, the
  public resolvers (8.8.8.8, 1.1.1.1, ...: infrastructure), an IPv6 shape of under three groups (``[::2]``).
* api_key: key shapes of the big providers and long values assigned to a secret name; a value without both
  letters and digits (``YOUR_API_KEY_HERE``) or holding ``EXAMPLE`` (AWS's documented
  ``AKIAIOSFODNN7EXAMPLE``) is a placeholder.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

# entity name in params -> replacement tag
PII_TAGS: dict[str, str] = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "credit_card": "<CREDIT_CARD>",
    "ip_address": "<IP_ADDRESS>",
    "api_key": "<API_KEY>",
}
Span = tuple[int, int, str]

_PHONE_WORDS = re.compile(r"(?i)\b(?:phone|tel|telephone|call|mobile|cell|fax|contact|whats\s?app|sms)\b")
# a number or inbox introduced as an organisation's line names no person: "the Flint Police Department at",
# "toll-free tip line at", "send your photos to", "write to" (a public submission inbox)
_ORG_BEFORE = re.compile(
    r"(?i)\b(?:department|police|office|hotline|helpline|lifeline|line|cent(?:er|re)|desk|stoppers|headquarters|"
    r"bureau|agency|company|customer service|store|restaurant|hotel|clinic|hospital|school|embassy|bank|branch|"
    r"support|service|reservations?|reception|firm|inc|llc|ltd|corp(?:oration)?|toll[- ]free)\b[^.\n]{0,25}$"
)
_PUBLIC_INBOX_BEFORE = re.compile(
    r"(?i)\b(?:send|submit|write|email|e-mail|mail|forward)\b(?![^.\n]*\bme\b)[^.\n]{0,40}\bto\s*$"
)
_CARD_WORDS = re.compile(r"(?i)\b(?:card|visa|master\s?card|amex|american express|credit|debit|payment)\b")
_UNIT_AFTER = re.compile(
    r"(?i)\s?(?:%|percent|°|degrees?|[kcm]?m\b|km|kg|mg|g\b|lbs?|pounds?|ounces?|oz|feet|ft|inch|miles?|"
    r"yards?|meters?|metres?|liters?|litres?|gallons?|cups?|tons?|hours?|minutes?|seconds?|years?|days?|"
    r"people|dollars?|euros?|usd|bytes?|[kmgt]b\b|times|points?|votes?)(?!\w)"
)
# a phone-shaped span: +international, (area) or NANP grouping, or a plain/grouped run (needs a phone word)
_PHONE = re.compile(
    r"(?<![\w.,+/-])(?:"
    r"(?P<intl>\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4})"
    r"|(?P<nanp>(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}(?P<sep>[ .-]))\d{3}(?(sep)(?P=sep)|[ .-])\d{4})"
    r"|(?P<other>\d{2,5}(?:[ .-]\d{2,6}){1,3}|\d{7,15})"
    r")(?![\w/]|[.,]\d|-\d)"
)
_CARD = re.compile(r"(?<![\w.,+/-])\d(?:[ -]?\d){12,18}(?![\w/]|[.,]\d|[ -]\d)")
_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@((?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24})\b")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# years, year ranges and dates have phone shapes too: 1990-2000, 2020-12-31, 31.12.2020
_DATE_OR_YEARS = re.compile(
    r"(?:1[5-9]|20)\d\d(?:[ .-](?:1[5-9]|20)\d\d)+|\d{4}[ .-]\d{1,2}[ .-]\d{1,2}|\d{1,2}[ .-]\d{1,2}[ .-]\d{2,4}"
)
_TRIGGER = re.compile(r"[0-9@]")
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|\bversion\s?|\bver\.?\s?|\brelease\s?)$")
# a well-known server's address (a time server, a public resolver) is infrastructure, not a person's
_SERVER_BEFORE = re.compile(r"(?i)\b(?:server|dns|nameserver|resolver|ntp|gateway|proxy|ping|traceroute)\b\W{0,3}$")
_PUBLIC_RESOLVER = re.compile(r"8\.8\.[48]\.[48]|1\.[01]\.[01]\.1|9\.9\.9\.9|208\.67\.22[02]\.22[02]")
_API_KEY = re.compile(
    r"\bsk-(?:proj-|svcacct-|ant-)?[A-Za-z0-9_-]{20,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})\b"
    r"|\bhf_[A-Za-z0-9]{30,}\b"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"
)
# a long value (group 1) assigned to a secret-looking name: api_key = "...", "token": "..."
_ASSIGNED_SECRET = re.compile(
    r"(?i:\b(?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9_\-+/=]{20,})"
)


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


_TEST_CARDS = _words(
    "4111111111111111 4012888888881881 4222222222222 4242424242424242 4000056655665556 4000000000000002 "
    "5555555555554444 5105105105105100 5200828282828210 2223003122003222 378282246310005 371449635398431 "
    "378734493671000 6011111111111117 6011000990139424 6011000000000004 30569309025904 38520000023237 "
    "3530111333300000 3566002020360505 6200000000000005"
)
# Ofcom's ranges for drama: 020 7946 0xxx, 0113 496 0xxx, 0161 496 0xxx, 01632 960xxx, 07700 900xxx
_UK_DRAMA = tuple(p + r for p in ("44", "0") for r in ("2079460", "1134960", "1614960", "1632960", "7700900"))
_NANP_TOLL_FREE = frozenset({"800", "833", "844", "855", "866", "877", "888"})  # businesses and hotlines
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = frozenset({"example", "test", "invalid", "localhost", "local"})
_PLACEHOLDER_DOMAINS = _words(
    "domain.com yourdomain.com mydomain.com company.com yourcompany.com mycompany.com companyname.com "
    "website.com yourwebsite.com yoursite.com site.com email.com youremail.com sample.com test.com foo.com "
    "bar.com foobar.com xyz.com acme.com abc.com somewhere.com"
)
# mailboxes that are placeholders, not a person
_PLACEHOLDER_USERS = _words(
    "user username name yourname your.name firstname.lastname first.last youremail your.email your_email "
    "email e-mail someone somebody me myname my.name test example sample foo bar foobar abc xyz xxx "
    "john.doe jane.doe johndoe janedoe john_doe jane_doe john.smith jane.smith"
)
# a mailbox named for a role, a department or a campaign, not a person ("promotions@", "customer.service@",
# "noreply-alerts@", "support2@"): an organisation's address, published to be written to
_ROLE_MAILBOX = re.compile(
    r"(?:(?:do-?)?no-?t?-?reply|info|support|sales|contact|admin(?:istrator)?|(?:web|post|host)master|abuse|help(?:desk)?|"
    r"hello|hi|press|office|team|feedback|letters|tips|news(?:letters?|room)?|editors?|media|pr|promos?|promotions?|"
    r"marketing|offers?|deals|orders?|billing|accounts?|invoices?|payments?|customers?|customer[._-]?(?:service|"
    r"support|care)|services?|care|(?:en|in)quir(?:y|ies)|reservations?|bookings?|careers|jobs|hr|recruiting|privacy|"
    r"legal|security|compliance|alerts?|notif(?:y|ications?)|updates|mailer-daemon|members?|membership|subscriptions?|"
    r"store|shop|general|reception|events?|donations?|partners?|community|social|returns|shipping)(?:[._+-]\w+)?\d*"
)
# a placeholder a writer puts where an address goes: "your_email@", "my_gmail_address@", "email123@", "yourname@"
_PLACEHOLDER_MAILBOX = re.compile(
    r"(?:your?|my|our|sample|fake|dummy|placeholder|example|test|user)"
    r"(?:[._-]?(?:e-?mail|name|address|mail|user(?:name)?|account|id|login))?(?:[._-]\w+)?\d*"
    r"|(?:\w+[._-])?(?:e-?mail|address|username|mailbox)(?:[._-]\w+|\d+)?"
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _fictitious_phone(digits: str) -> bool:
    national = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
    return (
        (len(national) == 10 and national[:3] in _NANP_TOLL_FREE)
        or len(set(digits)) <= 2
        or digits.startswith("000")
        or national[-10:] in {"1234567890", "0123456789", "9876543210"}
        or national[3:6] == "555"  # NANP: 555 exchanges are for fiction (555-0100..0199 reserved outright)
        or national[:3] == "555"  # as an area code (unassigned) or a 7-digit number's exchange
        or national.endswith("1234567")
        or digits in "0123456789012345"
        or digits in "9876543210987654"
        or any(digits.startswith(p) for p in _UK_DRAMA)
    )


def _phones(text: str) -> Iterable[tuple[int, int]]:
    import phonenumbers

    for m in _PHONE.finditer(text):
        span, digits = m.group(), re.sub(r"\D", "", m.group())
        if not 7 <= len(digits) <= 15 or _fictitious_phone(digits) or _UNIT_AFTER.match(text, m.end()):
            continue
        before = text[max(0, m.start() - 40) : m.start()]
        if _ORG_BEFORE.search(before):
            continue
        worded = bool(_PHONE_WORDS.search(before))
        plain = span.isdigit()
        if m.group("other") and not (worded and (plain or not _DATE_OR_YEARS.fullmatch(span))):
            continue
        if m.group("nanp") and " " in span and "(" not in span and not worded:
            continue  # "252 642 7293" in a table of statistics
        if plain or m.group("intl") or m.group("nanp"):
            # a plain run is valid only as a full US number: "Is it 828816887?" in a made-up dialogue is not
            try:
                number = phonenumbers.parse(span, "US")
            except phonenumbers.NumberParseException:
                continue
            if not (
                phonenumbers.is_valid_number(number)
                or (worded and not plain and phonenumbers.is_possible_number(number))
            ):
                continue
        yield m.span()


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for m in _CARD.finditer(text):
        span, digits = m.group(), re.sub(r"\D", "", m.group())
        if digits[0] not in "23456" or digits in _TEST_CARDS or len(set(digits)) <= 3 or not _luhn(digits):
            continue
        parts = re.split(r"[ -]", span)
        if len(set(re.findall(r"[ -]", span))) > 1 or all(re.fullmatch(r"(?:19|20)\d\d", p) for p in parts):
            continue  # "2013-2014 2014 2015": years, mixed separators
        groups = [len(p) for p in parts]
        grouped = (groups[:-1] == [4] * (len(groups) - 1) and 1 <= groups[-1] <= 4) or groups == [4, 6, 5]
        if (grouped and len(groups) > 1) or _CARD_WORDS.search(text, max(0, m.start() - 40), m.start()):
            yield m.span()


def _emails(text: str, suffix_of: Callable[[str], str]) -> Iterable[tuple[int, int]]:
    for m in _EMAIL.finditer(text):
        user, domain = m.group().lower().split("@")
        tld = domain.rsplit(".", 1)[-1]
        if tld in _RESERVED_TLDS or domain in _PLACEHOLDER_DOMAINS or user in _PLACEHOLDER_USERS:
            continue
        if re.match(r"(?:example|sample|test|fake|dummy)\d*\.", domain):  # "jane@example2.com"
            continue
        if _ROLE_MAILBOX.fullmatch(user) or _PLACEHOLDER_MAILBOX.fullmatch(user):
            continue
        if _PUBLIC_INBOX_BEFORE.search(text, max(0, m.start() - 60), m.start()):
            continue
        if any(domain == d or domain.endswith("." + d) for d in _RESERVED_DOMAINS) or not suffix_of(domain):
            continue
        yield m.span()


def _ips(text: str) -> Iterable[tuple[int, int]]:
    for m in (*_IPV4.finditer(text), *_IPV6.finditer(text)):
        try:
            ip = ipaddress.ip_address(m.group())
        except ValueError:
            continue
        before = text[max(0, m.start() - 12) : m.start()]
        code = ip.version == 6 and len([g for g in m.group().split(":") if g]) < 3  # "[::2]": a slice in code
        infra = _PUBLIC_RESOLVER.fullmatch(m.group()) or _VERSION_BEFORE.search(before) or _SERVER_BEFORE.search(before)
        if ip.is_global and not ip.is_multicast and not code and not infra:
            yield m.span()


def _api_keys(text: str) -> Iterable[tuple[int, int]]:
    spans = [m.span() for m in _API_KEY.finditer(text)] + [m.span(1) for m in _ASSIGNED_SECRET.finditer(text)]
    for start, end in sorted(set(spans)):
        # a secret mixes letters and digits; "YOUR_API_KEY_HERE" and "tokenizer_config" are not secrets
        key = text[start:end]
        if re.search(r"\d", key) and re.search(r"[A-Za-z]", key) and "EXAMPLE" not in key.upper():
            yield start, end


@cache
def _recognizers() -> dict[str, Callable[[str], Iterable[tuple[int, int]]]]:
    """Span finders per entity name; the email one loads tldextract's bundled snapshot (offline) once."""
    import tldextract

    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
    return {
        "email": lambda text: _emails(text, lambda domain: extract(domain).suffix),
        "phone": _phones,
        "credit_card": _cards,
        "ip_address": _ips,
        "api_key": _api_keys,
    }


def find_pii(text: str, entities: Iterable[str]) -> list[Span]:
    """Non-overlapping spans (start, end, entity name) of plausible personal data in `text`, in text order.

    Where spans of two entities overlap, the first found wins, in the order api_key (the most specific
    shape), email, credit_card, ip_address, phone (a card number beats the phone number it also looks like).
    """
    recognizers = _recognizers()
    wanted = set(entities)
    taken: list[Span] = []
    if not _TRIGGER.search(text):  # every entity needs a digit or an @ (an API key's digit); most texts have none
        return taken
    for name in ("api_key", "email", "credit_card", "ip_address", "phone"):
        if name in wanted:
            for start, end in recognizers[name](text):
                if all(end <= s or start >= e for s, e, _ in taken):
                    taken.append((start, end, name))
    return sorted(taken)


def redact(text: str, spans: list[Span]) -> str:
    """`text` with each span replaced by its entity's tag (<EMAIL>, <PHONE>, ...)."""
    for start, end, name in sorted(spans, reverse=True):
        text = text[:start] + PII_TAGS[name] + text[end:]
    return text


# --- the task's subject ---------------------------------------------------------------------------

_SUBJECT_NOUNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"(?i)\be-?mail[ -]?(?:address(?:es)?|ids?)\b|\baddress(?:es)? of (?:the |an )?e-?mails?\b"),
    "phone": re.compile(
        r"(?i)\b(?:(?:tele|cell|mobile |cell |fax |contact )?phone[ -]?(?:numbers?|nos?\b)|"
        r"(?:mobile|cell|fax|contact|telephone) numbers?)"
    ),
    "credit_card": re.compile(r"(?i)\b(?:(?:credit|debit|bank)[ -]?cards?|card[ -]numbers?)\b"),
    "ip_address": re.compile(r"(?i)\b(?:ip(?:v[46])?[ -]?address(?:es)?|ipv[46])\b"),
    "api_key": re.compile(r"(?i)\b(?:api[ -_]?keys?|access[ -_]?tokens?|secret[ -_]?keys?|auth\w* tokens?)\b"),
}
# "extract all emails": the bare plural counts with the verbs that only make sense for addresses
_EMAILS_BARE = re.compile(
    r"(?i)\b(?:extract|validat|verif|pars|mask|anonymi[sz]|redact|regex|regular expression|fix|correct|clean|"
    r"malformed|invalid)\w*\b.{0,60}\be-?mails?\b"
)
# stems (any ending), then whole words (plural or third person at most): "Given ..." and "which" are not tasks
_TASK_WORDS = re.compile(
    r"(?i)\b(?:(?:(?:re)?format|validat|verif|extract|detect|identif|recogni[sz]|pars|convert|mask|anonymi[sz]|"
    r"redact|obfuscat|normali[sz]|generat|classif|encod|decod|regex|regular expression|program|function|script|"
    r"snippet|quer)\w*|(?:check|match|hide|remove|replace|sort|split|look ?up|pattern|code|class|method|sql|"
    r"binary|valid|find|list|give|tell|provide|choose|pick|select|fix|correct|unused|fake|made[- ]up|"
    r"fictional|invent)(?:e?s)?\b|what(?:'s| is| are)\b)"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def subject_entities(instruction: str, entities: Iterable[str]) -> list[str]:
    """The entities (of `entities`) that the task is about, judged from its instruction, sorted.

    An entity is the subject when one sentence of the instruction names it (``phone number``, ``email
    address``, ``IP address``, ``IPv4``, ``credit card``, ``API key``) together with a task word (format,
    validate, extract, convert, parse, mask, anonymize, regex, program, function, what is, ...), or when
    addresses are extracted or validated ("extract all emails"). Redacting such an entity would leave the task
    without what it is about, so :func:`redact_record` keeps it. A secret is never a subject: an API key in
    the data is a leak whatever the task ("how do I pass an API key?" answered with a live-looking key).
    """
    found: set[str] = set()
    named = [e for e in entities if e in _SUBJECT_NOUNS and e != "api_key" and _SUBJECT_NOUNS[e].search(instruction)]
    if not named and not ("email" in entities and _EMAILS_BARE.search(instruction)):
        return []
    for sentence in _SENTENCE.split(instruction):
        if not _TASK_WORDS.search(sentence):
            continue
        found.update(e for e in named if _SUBJECT_NOUNS[e].search(sentence))
        if "email" in entities and _EMAILS_BARE.search(sentence):
            found.add("email")
    return sorted(found)


def _first_user_turn(record: dict[str, Any]) -> str:
    return next((m["content"] for m in record["messages"] if m["role"] == "user"), "")


def redact_record(record: dict[str, Any], entities: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Redact plausible personal data in every text of `record`, in place, except the task's subject.

    The texts are ``instruction``, ``input``, ``output``, ``text`` and each ``messages`` turn. The task's
    instruction is ``instruction`` (the first user turn for a conversation; none for a document), and
    :func:`subject_entities` decides which entities it is about: spans of those are left exactly as they are
    (the caller flags the record), so "Format the phone number (415) 867-5309" keeps its number and its
    answer. Every other span is replaced by its tag, and so is every other verbatim occurrence of a redacted
    span in any text of the record (one found in the input is also redacted where the answer quotes it, even
    where the answer lacks the context that made it a phone), so the answer stays consistent with the
    question. A span found only in the output is redacted there; when the instruction asks for it ("What is
    the support phone number?") the entity is the subject and nothing is rewritten.

    Args:
        record: a record (see :mod:`stages.core.records`); its texts are rewritten in place.
        entities: entity names to look for (keys of :data:`PII_TAGS`).

    Returns:
        (spans redacted per entity, sorted by entity; entities found but kept as the task's subject, sorted).
    """
    entities = list(entities)
    instruction = _first_user_turn(record) if record["kind"] == "conversation" else record["instruction"]
    texts: list[tuple[Any, Any]] = [(record, f) for f in ("instruction", "input", "output", "text") if record[f]]
    texts += [(m, "content") for m in record["messages"] if m["content"]]
    spans = {i: find_pii(obj[key], entities) for i, (obj, key) in enumerate(texts)}
    if not any(spans.values()):
        return {}, []
    subjects = set(subject_entities(instruction, entities))
    kept = sorted({name for found in spans.values() for _, _, name in found if name in subjects})
    redacted = {(obj[key][s:e], name) for i, (obj, key) in enumerate(texts) for s, e, name in spans[i]}
    redacted = {(value, name) for value, name in redacted if name not in subjects}
    counts: Counter[str] = Counter()
    for i, (obj, key) in enumerate(texts):
        text = obj[key]
        mine = [sp for sp in spans[i] if sp[2] not in subjects]
        # the same value elsewhere in the record, on token boundaries; longest first, in a fixed order
        for value, name in sorted(redacted, key=lambda v: (-len(v[0]), v)):
            for m in re.finditer(rf"(?<![\w.@+-]){re.escape(value)}(?![\w@]|[.-]\w)", text):
                if all(m.end() <= s or m.start() >= e for s, e, _ in (*spans[i], *mine)):
                    mine.append((m.start(), m.end(), name))
        counts.update(name for _, _, name in mine)
        obj[key] = redact(text, mine)
    return dict(sorted(counts.items())), kept
