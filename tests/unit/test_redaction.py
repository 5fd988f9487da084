"""One redaction rule for results and live output: every form of every secret is masked."""

from __future__ import annotations

import base64
import urllib.parse

import pytest

from orchestrator.core.redaction import (
    MASK,
    redact_bytes,
    redact_result,
    redact_text,
    secret_forms,
)
from orchestrator.models import ToolExecutionResult

SECRET = "s3cr3t/value+x"


@pytest.mark.parametrize(
    "printed",
    [
        SECRET,
        '"s3cr3t\\/value+x"'[1:-1].replace("\\/", "/"),
        base64.b64encode(SECRET.encode()).decode(),
        base64.urlsafe_b64encode(SECRET.encode()).decode(),
        urllib.parse.quote(SECRET, safe=""),
        urllib.parse.quote_plus(SECRET),
        SECRET.encode().hex(),
    ],
)
def test_every_encoded_form_of_a_secret_is_masked_in_text_and_bytes(printed: str) -> None:
    forms = secret_forms([SECRET])
    assert redact_text(f"before {printed} after", forms) == f"before {MASK} after"
    assert redact_bytes(f"<{printed}>".encode(), forms) == f"<{MASK}>".encode()


def test_short_secrets_are_masked_as_themselves_but_not_by_their_encodings() -> None:
    forms = secret_forms(["ab"])
    assert redact_text("xaby", forms) == f"x{MASK}y"
    assert "YWI" not in forms and "6162" not in forms  # base64 / hex of "ab": ordinary text


def test_a_json_escaped_secret_is_masked() -> None:
    forms = secret_forms(['pa"ss\\word'])
    assert redact_text('{"k": "pa\\"ss\\\\word"}', forms) == '{"k": "***"}'


def test_empty_secrets_mask_nothing() -> None:
    assert secret_forms(["", ""]) == []


def test_results_and_live_output_follow_the_same_rule() -> None:
    result = ToolExecutionResult(
        execution_id="e",
        tool_name="t",
        session_id="s",
        status="succeeded",
        stdout="k=ab\n",
        stderr=base64.b64encode(SECRET.encode()).decode(),
        result={"ab": ["x ab y", 3]},
    )
    redacted = redact_result(result, ["ab", SECRET])
    assert redacted.stdout == f"k={MASK}\n"
    assert redacted.stderr == MASK
    assert redacted.result == {MASK: [f"x {MASK} y", 3]}
    forms = secret_forms(["ab", SECRET])
    assert redact_bytes(b"k=ab\n", forms).decode() == redacted.stdout
