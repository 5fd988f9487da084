"""Behaviour of :mod:`orchestrator.core.output`: capped capture and JSON result extraction."""

from __future__ import annotations

import tracemalloc

import pytest

from orchestrator.core.output import TRUNCATION_MARK, CappedBuffer, capture, extract_result

CAP = 1024
# Distinguishable 11-byte lines, so a misplaced head or tail byte shows up: 11 000 bytes.
PAYLOAD = b"".join(f"line {i:05d}\n".encode() for i in range(1000))


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def expected_truncated(data: bytes, cap: int) -> str:
    head, tail = data[: cap // 2], data[len(data) - (cap - cap // 2) :]
    skipped = len(data) - len(head) - len(tail)
    return head.decode() + TRUNCATION_MARK.format(skipped=skipped) + tail.decode()


@pytest.mark.parametrize(
    "chunk_size",
    [
        pytest.param(1, id="1"),
        pytest.param(7, id="7"),
        pytest.param(511, id="just_under_half_cap"),
        pytest.param(4096, id="4096"),
        pytest.param(CAP + 1, id="larger_than_cap"),
        pytest.param(len(PAYLOAD), id="single_huge_chunk"),
    ],
)
def test_overflowing_output_keeps_head_and_tail_around_a_marker(chunk_size):
    buffer = capture(chunked(PAYLOAD, chunk_size), CAP)

    assert buffer.truncated is True
    assert buffer.total_bytes == len(PAYLOAD)
    assert buffer.text() == expected_truncated(PAYLOAD, CAP)
    assert "[... 9976 bytes truncated ...]" in buffer.text()  # 11000 - 512 - 512


@pytest.mark.parametrize("cap", [1, 2, 3, 1023, 1025])
def test_odd_and_tiny_caps_split_into_head_and_tail(cap):
    buffer = capture(chunked(PAYLOAD, 13), cap)

    assert buffer.truncated is True
    assert buffer.text() == expected_truncated(PAYLOAD, cap)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize("size", [0, 1, CAP - 1, CAP])
def test_output_up_to_the_cap_is_kept_exactly(size, chunk_size):
    data = PAYLOAD[:size]

    buffer = capture(chunked(data, chunk_size), CAP)

    assert buffer.truncated is False
    assert buffer.total_bytes == size
    assert buffer.text() == data.decode()


def test_one_byte_over_the_cap_reports_one_skipped_byte():
    data = PAYLOAD[: CAP + 1]

    buffer = capture([data], CAP)

    assert buffer.truncated is True
    assert "[... 1 bytes truncated ...]" in buffer.text()
    assert buffer.text() == expected_truncated(data, CAP)


def test_tail_follows_later_writes_after_a_huge_chunk():
    buffer = CappedBuffer(CAP)
    buffer.write(b"h" * 5000)
    buffer.write(b"0123456789")

    text = buffer.text()

    assert text.startswith("h" * 512)
    assert text.endswith("h" * 502 + "0123456789")
    assert buffer.total_bytes == 5010


def test_memory_stays_bounded_while_50_mb_pass_through_a_1_mib_buffer():
    cap = 1 << 20
    chunk = b"0123456789abcdef" * 4096  # 64 KiB, allocated once
    total = 50 * 1024 * 1024
    buffer = CappedBuffer(cap)

    tracemalloc.start()
    try:
        for _ in range(total // len(chunk)):
            buffer.write(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert buffer.total_bytes == total
    assert buffer.truncated is True
    assert peak < 4 * cap  # kept bytes plus some slack, never anywhere near the 50 MB
    marker = TRUNCATION_MARK.format(skipped=total - cap)
    text = buffer.text()
    assert len(text) == cap + len(marker)
    assert text[cap // 2 : cap // 2 + len(marker)] == marker


def test_invalid_utf8_is_decoded_with_replacement_characters():
    buffer = capture([b"caf\xc3\xa9 ", b"\xff\xfe ok"], CAP)

    assert buffer.text() == "café \ufffd\ufffd ok"


def test_multibyte_character_split_across_writes_is_reassembled():
    buffer = capture([b"caf\xc3", b"\xa9!"], CAP)

    assert buffer.text() == "café!"


def test_multibyte_character_cut_by_truncation_becomes_a_replacement_character():
    data = "é".encode() * 100  # 200 bytes; cap 11 cuts head at 5 bytes, tail keeps 6
    buffer = capture([data], 11)

    text = buffer.text()

    assert text.startswith("éé\ufffd")
    assert text.endswith("ééé")
    assert "[... 189 bytes truncated ...]" in text


def test_empty_buffer_is_empty_and_not_truncated():
    buffer = CappedBuffer(CAP)

    assert buffer.text() == ""
    assert buffer.truncated is False
    assert buffer.total_bytes == 0


# -- extract_result ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "result"),
    [
        pytest.param('{"a": 1}', {"a": 1}, id="single_object"),
        pytest.param('log line\n{"a": 1}\n', {"a": 1}, id="object_after_logs"),
        pytest.param('{"a": 1}\n{"b": 2}\n', {"b": 2}, id="last_object_line_wins"),
        pytest.param('{"a": 1}\ntrailing log\n', {"a": 1}, id="object_before_trailing_logs"),
        pytest.param('{"a": 1}\n[1, 2]\n', {"a": 1}, id="array_line_ignored_for_line_rule"),
        pytest.param('{"a": 1}\n42\n', {"a": 1}, id="number_line_ignored"),
        pytest.param('{"a": 1}\n{broken}\n', {"a": 1}, id="broken_object_line_skipped"),
        pytest.param('   {"a": {"b": [1]}}   \n', {"a": {"b": [1]}}, id="indented_nested_object"),
        pytest.param("[1, 2, 3]", [1, 2, 3], id="whole_stdout_array"),
        pytest.param("42\n", 42, id="whole_stdout_number"),
        pytest.param('"text"', "text", id="whole_stdout_string"),
        pytest.param("true", True, id="whole_stdout_bool"),
        pytest.param('{\n  "pretty": true\n}\n', {"pretty": True}, id="pretty_printed_object"),
        pytest.param("[\n 1,\n 2\n]", [1, 2], id="pretty_printed_array"),
        pytest.param("hello world", None, id="garbage"),
        pytest.param("{not json}", None, id="brace_garbage"),
        pytest.param("log\n[1, 2]\n", None, id="array_after_logs_is_not_whole_stdout"),
        pytest.param("", None, id="empty"),
        pytest.param("  \n\t\n", None, id="whitespace_only"),
        pytest.param("null", None, id="json_null"),
    ],
)
def test_extract_result(stdout, result):
    assert extract_result(stdout) == result


def test_with_tail_of_keeps_this_head_and_the_other_tail():
    followed = CappedBuffer(10)
    for chunk in (b"HEAD1", b"middle-bytes", b"cut-"):  # the follower missed the end
        followed.write(chunk)
    engine_log = CappedBuffer(10)
    for chunk in (b"rotated-", b"away", b"...TAIL5"):  # the engine lost the head
        engine_log.write(chunk)

    merged = followed.with_tail_of(engine_log)

    assert merged.truncated
    text = merged.text()
    assert text.startswith("HEAD1") and text.endswith("TAIL5")
