"""text-tools: text and data work in Python -- word statistics, a Markdown outline, a CSV summary.

Hooks (all take and return JSON):

- ``text.stats``   ``{"text": "..."}`` -> counts of lines, words, characters, unique words, and
  the most frequent words (``top_n`` of the configuration, default 5).
- ``markdown.outline``  ``{"markdown": "..."}`` -> the ATX headings (``#`` .. ``######``) with
  level, text and a GitHub-style anchor slug; fenced code blocks are skipped.
- ``csv.summary``  ``{"csv": "...", "delimiter": ","}`` -> row and column counts and, per
  column, how many values are empty, and min / max / mean for numeric columns or the most
  common values for the others.
"""

import collections
import csv
import io
import re
import statistics

from plugbox_sdk import InvalidInputError, config, hook, init, log

_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_MAX_ROWS = 100_000

#: Set by init from the configuration; the manifest's config_schema keeps it in 1..100.
_top_n = 5


@init
def setup(settings: dict) -> None:
    """Reads ``top_n`` once per instance (the init function gets the configuration)."""
    global _top_n
    _top_n = int(settings.get("top_n", 5))


def _text_field(value: object, field: str) -> str:
    """``value[field]`` as a string, or an invalid-input error naming the field."""
    if not isinstance(value, dict) or not isinstance(value.get(field), str):
        raise InvalidInputError(f'expected a JSON object with a string field "{field}"')
    return value[field]


@hook("text.stats", json=True)
def text_stats(value: object) -> dict:
    """Counts and the most frequent words of ``value["text"]``."""
    text = _text_field(value, "text")
    words = [w.lower() for w in _WORD.findall(text)]
    counts = collections.Counter(words)
    # Ties broken alphabetically, so the result does not depend on input order.
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:_top_n]
    log.debug(f"text.stats: {len(words)} words")
    return {
        "lines": len(text.splitlines()),
        "words": len(words),
        "characters": len(text),
        "unique_words": len(counts),
        "top_words": [{"word": w, "count": n} for w, n in top],
    }


def _slug(text: str, seen: collections.Counter) -> str:
    """A GitHub-style anchor: lower case, punctuation dropped, spaces to '-', made unique."""
    base = re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-")
    n = seen[base]
    seen[base] += 1
    return base if n == 0 else f"{base}-{n}"


@hook("markdown.outline", json=True)
def markdown_outline(value: object) -> dict:
    """The headings of ``value["markdown"]``, in order."""
    markdown = _text_field(value, "markdown")
    headings = []
    seen: collections.Counter = collections.Counter()
    fence = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        opened = _FENCE.match(line)
        if opened:
            marker = opened.group(1)
            fence = None if fence == marker else (fence or marker)
            continue
        if fence:
            continue
        match = _HEADING.match(line)
        if match:
            text = match.group(2).strip()
            headings.append(
                {"level": len(match.group(1)), "text": text, "slug": _slug(text, seen),
                 "line": number}
            )
    return {"headings": headings}


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", "")) if text else None
    except ValueError:
        return None


@hook("csv.summary", json=True)
def csv_summary(value: object) -> dict:
    """Per-column statistics of the CSV text ``value["csv"]`` (first row: the header)."""
    data = _text_field(value, "csv")
    delimiter = value.get("delimiter", ",") if isinstance(value, dict) else ","
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise InvalidInputError('"delimiter" must be a single character')
    try:
        rows = list(csv.reader(io.StringIO(data), delimiter=delimiter))
    except csv.Error as exc:
        raise InvalidInputError(f"not valid CSV: {exc}") from None
    if not rows:
        raise InvalidInputError("the CSV is empty: expected a header row")
    if len(rows) - 1 > _MAX_ROWS:
        raise InvalidInputError(f"at most {_MAX_ROWS} data rows, got {len(rows) - 1}")
    header, body = rows[0], rows[1:]
    columns = []
    for index, name in enumerate(header):
        cells = [row[index].strip() if index < len(row) else "" for row in body]
        present = [c for c in cells if c]
        numbers = [_number(c) for c in present]
        column: dict = {"name": name, "empty": len(cells) - len(present)}
        if present and all(n is not None for n in numbers):
            values = [n for n in numbers if n is not None]
            column.update(
                type="number",
                min=min(values),
                max=max(values),
                mean=round(statistics.fmean(values), 6),
            )
        else:
            common = collections.Counter(present).most_common()
            column.update(
                type="text",
                distinct=len(common),
                top=[{"value": v, "count": n} for v, n in
                     sorted(common, key=lambda vc: (-vc[1], vc[0]))[:3]],
            )
        columns.append(column)
    ragged = sum(1 for row in body if len(row) != len(header))
    return {"rows": len(body), "columns": columns, "ragged_rows": ragged}


@hook("config.show", json=True)
def config_show(value: object) -> dict:
    """The configuration as the plugin sees it through the ``config`` service."""
    return {"top_n": config.get("top_n", 5), "all": config.get_all()}
