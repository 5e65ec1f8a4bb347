"""PII detection and scrubbing for training text: pure Python (regexes, and ``phonenumbers`` for phones).

Each PII type but phones has one compiled pattern and, where a regex alone cannot decide, a
validator (Luhn for cards, ISO 7064 mod-97 and the country length for IBANs, group rules for
IPv6, a few sanity rules for ``password=...`` values). Phones come from ``phonenumbers``
(Google's libphonenumber metadata: every region's valid lengths, prefixes, trunk ``0`` and
formats, maintained upstream) with look-alike guards of ours on top, plus 7-digit local
numbers after a word such as "call" or "tel". Chosen over Presidio's recognisers, which need a
spaCy model download and an analyzer engine per call (and use phonenumbers underneath for
phones), and over more hand-written regexes, which missed a quarter of real C4 phones
(``1-`` prefixes, ``508 487-1279``, ``(02) 9876 5432``). Overlapping candidates
are settled by ``PRECEDENCE`` and then by length, so every character belongs to at most one
span. Placeholders (``<EMAIL>``, ``<SECRET>``, ...) match no pattern, so scrubbing twice
changes nothing more.

    >>> scrub("Mail jane+news@mail.example.org or call +44 20 7946 0958.")[0]
    'Mail <EMAIL> or call <PHONE>.'
"""
from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from typing import Callable

PII_TYPES = ("EMAIL", "IP", "PHONE", "CREDIT_CARD", "SSN", "IBAN", "SECRET")
# Overlaps go to the most specific detector first, then to the longest span.
PRECEDENCE = ("SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP", "PHONE")

# A dot-separated domain ending in a TLD of letters: no `@decorator`, `pip@23.1` or `user@localhost`.
EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?![\w(])")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IP = re.compile(
    # IPv4: exactly four octets; a neighbouring dotted part makes it a version string or an OID
    rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)"
    # IPv6 candidate (hex groups and colons), checked by _ip_ok; `x[1::2]` is a slice
    r"|(?<![\w:])(?<!\w\[)[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,8}(?![\w:]|\.\d)"
)

PHONE_REGIONS = ("US", "GB", "DE", "FR", "AU", "IN")  # national formats read without a +country code
PHONE_LENIENCIES = ("possible", "valid", "strict_grouping", "exact_grouping")  # phonenumbers.Leniency, loosest first


@dataclass(frozen=True)
class PhoneRules:
    regions: tuple[str, ...] = PHONE_REGIONS
    leniency: str = "valid"  # national formats: valid for the region's metadata (not only of a possible length)


# Neighbours that make a digit span part of something longer: 1.2.3, a-123, #123, 12 345 678 ...
_PHONE_BEFORE = re.compile(r"(?:[\w+.#/-]|\d[ ])$")
_PHONE_AFTER = re.compile(r"^(?:\w|[./-]\d|[ ]\d)")
_PHONE_LOOK_ALIKE = re.compile(
    r"\d+"                          # a bare run of digits is an id, an order or an account number
    r"|\d{1,5}-\d{1,7}-\d{1,7}-[\dX]"  # ISBN-10/13 groups: a single check character at the end
    r"|\d{3,4}-\d{2}-\d{4,5}"        # SSN-shaped serials (a real SSN is taken before, by SSN)
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?")  # card-shaped (a Luhn-valid card is taken before)
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:phone|tel|telephone|call|fax|dial|ring|mobile|cell|contact|text|ph)\b\W{0,3}$")
LOCAL_PHONE = re.compile(r"(?<![\w+.#/-])(?<!\d[ ])[2-9]\d\d[-.]\d{4}(?!\w|[./-]\d|[ ]\d)")  # 555-0123

# 13-19 digits, bare or grouped 4-4-4-4(-3) / Amex 4-6-5 with one consistent separator.
CREDIT_CARD = re.compile(
    r"(?<![\w-])(?:\d{13,19}|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?"
    r"|\d{4}(?P<a>[ -])\d{6}(?P=a)\d{5})(?!\w|-\d)"
)

# AAA-GG-SSSS; area 000/666/9xx, group 00 and serial 0000 are never issued.
SSN = re.compile(
    r"(?<![\w-])(?<!\d[ ])(?!000|666|9\d\d)\d{3}(?P<s>[- ])(?!00)\d{2}(?P=s)(?!0000)\d{4}(?!\w|[- ]\d)"
)

IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"
)
IBAN_LENGTHS = {
    "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26,
    "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24,
}

SECRET = re.compile(
    r"""-----BEGIN[ A-Z0-9]*PRIVATE\ KEY-----[\s\S]*?-----END[ A-Z0-9]*PRIVATE\ KEY-----
    | \b(?:AKIA|ASIA)[A-Z0-9]{16}\b                   # AWS access key id
    | \bgh[pousr]_[A-Za-z0-9]{36}\b | \bgithub_pat_\w{22,}  # GitHub
    | \bglpat-[\w-]{20,}                                # GitLab
    | \bxox[baprs]-[A-Za-z0-9-]{10,}                    # Slack
    | (?<![A-Za-z0-9])(?P<key>(?i:password|passwd|(?:api|secret|secret[_-]?access|private)[_-]?key
          |(?:access|auth|refresh)[_-]?token|client[_-]?secret))
      ["']?[ \t]*[:=][ \t]*                             # key name is kept, only the value is replaced
      (?P<q>["'])?(?P<value>(?(q)(?:(?!(?P=q))[^\n])+|[^\s"',;&)}\]]+))(?(q)(?P=q))""",
    re.X,
)
_PLACEHOLDER = re.compile(r"<[^<>]*>|\$\{?\w+\}?|\{\{.*\}\}|%\(\w+\)s|([*xX.])\1*")
_CODE_VALUE = re.compile(r"[A-Za-z_][\w.]*[(\[]")  # os.environ[...], getpass(), Optional[str]


def _ip_ok(m: re.Match) -> bool:
    s = m.group()
    if ":" not in s:
        return True
    head, sep, tail = s.partition("::")
    groups = [g for part in (head, tail) if part for g in part.split(":")]
    if ":::" in s or "::" in tail or not all(groups):
        return False
    if not sep:
        return len(groups) == 8  # 12:30:45 or a MAC address is not an address
    # compressed: "::1", or >= 3 groups, or a 4-digit group (fe80::1) -- but not a[1::2] or a::b
    return len(groups) <= 7 and (s == "::1" or len(groups) >= 3 or any(len(g) == 4 for g in groups))


def _is_private_ip(s: str) -> bool:
    if ":" not in s:
        a, b = (int(x) for x in s.split(".")[:2])
        return a in (10, 127) or (a == 172 and 16 <= b <= 31) or (a, b) == (192, 168)
    first = int(s.partition("::")[0].split(":")[0] or "0", 16)
    # ::1 loopback, fc00::/7 unique local, fe80::/10 link local
    return s == "::1" or first & 0xFE00 == 0xFC00 or first & 0xFFC0 == 0xFE80


def _is_table_row(raw: str) -> bool:
    """A lone digit after the first group (`5035 7 0 15 24`: points, wins, top 5s ...) is a table of
    figures; numbers are written in groups of 2 or more (`1 800 ...` starts with its prefix)."""
    groups = re.findall(r"\d+", raw)
    return not raw.startswith("+") and any(len(g) == 1 for g in groups[1:])


def phone_spans(text: str, rules: PhoneRules = PhoneRules()) -> list[tuple[int, int]]:
    """(start, end) of phone numbers: phonenumbers' matches for every region (overlaps are settled by
    find_pii), less look-alikes; and 7-digit local numbers right after a phone word."""
    import phonenumbers

    if not re.search(r"\d(?:\D{0,3}\d){6}", text):  # fewer than 7 close digits: no number to look for
        return []
    leniency = getattr(phonenumbers.Leniency, rules.leniency.upper())
    # A number written with + and a country code is a phone by intent: taken when its length is possible,
    # whatever the region's ranges (fictional 555 numbers, new ranges); national ones must pass `leniency`.
    passes = [(region, leniency, False) for region in rules.regions]
    if re.search(r"\+\d", text):
        passes.append((rules.regions[0] if rules.regions else "US", phonenumbers.Leniency.POSSIBLE, True))
    spans = set()
    for region, level, plus_only in passes:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=level):
            start, end = match.start, match.end
            raw = text[start:end]
            if ((plus_only and not raw.startswith("+")) or _PHONE_BEFORE.search(text[max(0, start - 2):start])
                    or _PHONE_AFTER.match(text[end:end + 2]) or _PHONE_LOOK_ALIKE.fullmatch(raw) or _is_table_row(raw)):
                continue
            spans.add((start, end))
    for m in LOCAL_PHONE.finditer(text):
        if _PHONE_CONTEXT.search(text[max(0, m.start() - 20):m.start()]):
            spans.add(m.span())
    return sorted(spans)


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _card_ok(m: re.Match) -> bool:
    d = re.sub(r"\D", "", m.group())
    n = len(d)
    if d[0] == "4":
        network = n in (13, 16, 19)  # Visa
    elif "51" <= d[:2] <= "55" or "2221" <= d[:4] <= "2720":
        network = n == 16  # Mastercard
    elif d[:2] in ("34", "37"):
        network = n == 15  # Amex
    elif d[:4] == "6011" or d[:2] == "65":
        network = 16 <= n <= 19  # Discover
    else:
        network = False
    return network and _luhn(d)


def _iban_ok(m: re.Match) -> bool:
    s = m.group().replace(" ", "")
    want = IBAN_LENGTHS.get(s[:2])
    if not (len(s) == want if want else 15 <= len(s) <= 34):
        return False
    # ISO 7064 mod 97-10: country and check digits move to the end, letters become 10..35
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _secret_ok(m: re.Match) -> bool:
    value = m.group("value")
    if value is None:
        return True  # a token format, nothing more to check
    if len("".join(value.split())) < 6 or _PLACEHOLDER.fullmatch(value.strip()):
        return False
    if m.group("q"):
        return True
    # unquoted values in code are often variables: password=db_password, os.environ[...], self.pw
    return not (_CODE_VALUE.match(value) or re.fullmatch(r"[A-Za-z_]\w*(?:\.\w+)+", value)
                or m.group("key").lower() in value.lower())


_DETECTORS: dict[str, tuple[re.Pattern, Callable[[re.Match], bool] | None]] = {
    "SECRET": (SECRET, _secret_ok),
    "EMAIL": (EMAIL, None),
    "IBAN": (IBAN, _iban_ok),
    "CREDIT_CARD": (CREDIT_CARD, _card_ok),
    "SSN": (SSN, None),
    "IP": (IP, _ip_ok),
}


def find_pii(text: str, keep_private_ips: bool = False, phones: PhoneRules = PhoneRules()) -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, type)`` spans of PII in ``text``, sorted by start."""
    candidates = []
    for rank, kind in enumerate(PRECEDENCE):
        if kind == "PHONE":
            candidates += [(rank, start - end, start, end, kind) for start, end in phone_spans(text, phones)]
            continue
        pattern, valid = _DETECTORS[kind]
        for m in pattern.finditer(text):
            label: str | None = kind
            if valid is not None and not valid(m):
                if kind != "IBAN":
                    continue
                label = None  # a mistyped IBAN is no phone number either: reserve it, report nothing
            elif kind == "IP" and keep_private_ips and _is_private_ip(m.group()):
                label = None
            start, end = m.span("value") if m.groupdict().get("value") is not None else m.span()
            candidates.append((rank, start - end, start, end, label))
    chosen: list[tuple[int, int, str | None]] = []
    for _, _, start, end, label in sorted(candidates, key=lambda c: c[:4]):
        i = bisect_left(chosen, (start,))
        if (i and chosen[i - 1][1] > start) or (i < len(chosen) and chosen[i][0] < end):
            continue
        chosen.insert(i, (start, end, label))
    return [(s, e, label) for s, e, label in chosen if label]


def scrub(text: str, keep_private_ips: bool = False, phones: PhoneRules = PhoneRules()) -> tuple[str, Counter]:
    """``text`` with every PII span replaced by ``<TYPE>``, and how many of each type were replaced."""
    counts: Counter = Counter()
    parts, last = [], 0
    for start, end, kind in find_pii(text, keep_private_ips, phones):
        parts += [text[last:start], f"<{kind}>"]
        counts[kind] += 1
        last = end
    parts.append(text[last:])
    return "".join(parts), counts
