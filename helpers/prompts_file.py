"""A batch's prompts file (.txt: a prompt per line; .csv with a header; .jsonl: an object per line), checked whole
before anything loads: a bad row or unknown column raises `PromptsFileError` naming its line. Standard library only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from . import rules
from .errors import InvalidParameterError, PromptsFileError

COLUMNS = ("prompt", "negative_prompt", "seed", "num_inference_steps", "guidance_scale")
SUFFIXES = (".txt", ".csv", ".jsonl")
NUMBERS = {"seed": (int, rules.seed), "guidance_scale": (float, rules.guidance),  # type, and the notebooks' rule
           "num_inference_steps": (int, rules.steps)}


def _row(path, line: int, values: dict) -> dict:
    """Check one row's columns and types; return it with its line number."""
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise PromptsFileError(path, line, f"unknown column(s) {unknown}; the columns are {', '.join(COLUMNS)}")
    prompt = values.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptsFileError(path, line, f"needs a non-empty 'prompt', got {prompt!r}")
    row = {"line": line, "prompt": prompt}
    for name, (kind, rule) in NUMBERS.items():
        value = values.get(name)
        if value is None or value == "":
            continue
        try:
            number = kind(value) if isinstance(value, str) else value
        except ValueError:
            number = value  # the rule below names what is wanted
        try:
            rule(name, number)
        except InvalidParameterError as error:
            raise PromptsFileError(path, line, f"{name}={value!r} {error.rule}") from None
        row[name] = number
    negative = values.get("negative_prompt") or ""
    if not isinstance(negative, str):
        raise PromptsFileError(path, line, f"negative_prompt={negative!r} is not text")
    row["negative_prompt"] = negative
    return row


def read_prompts(path: str | Path) -> list[dict]:
    """Every row of a prompts file (.txt: one prompt a line, blank lines skipped; .csv; .jsonl), checked."""
    path = Path(path).expanduser()
    kind = path.suffix.lower()
    if kind not in SUFFIXES:
        raise PromptsFileError(path, 0, f"needs a {', '.join(SUFFIXES)} file, got {path.suffix or 'no suffix'!r}")
    if not path.is_file():
        raise PromptsFileError(path, 0, "no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise PromptsFileError(path, 0, f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    rows, lines = [], [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if kind == ".txt":
        rows = [_row(path, n, {"prompt": line}) for n, line in lines]
    elif kind == ".jsonl":
        for n, line in lines:
            try:
                values = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptsFileError(path, n, f"is not valid JSON ({error.msg})") from None
            if not isinstance(values, dict):
                raise PromptsFileError(path, n, f'needs a JSON object like {{"prompt": "a cat"}}, got {line[:60]!r}')
            rows.append(_row(path, n, values))
    else:
        reader = csv.DictReader(text.splitlines(keepends=True))
        header = reader.fieldnames or []
        if header and "prompt" not in header:
            raise PromptsFileError(path, 1, f"the header {header} has no 'prompt' column")
        for values in reader:
            if None in values:
                raise PromptsFileError(path, reader.line_num, f"has more fields than the header's {len(header)}")
            if any(v and v.strip() for v in values.values() if isinstance(v, str)):
                rows.append(_row(path, reader.line_num, {k: v for k, v in values.items() if v is not None}))
    if not rows:
        raise PromptsFileError(path, 0, "has no prompts")
    return rows
