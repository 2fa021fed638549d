"""segeig.safeio: bounded reads of user-named files, strict JSON, safe appends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from segeig.safeio import (
    UserFileError,
    iter_lines,
    open_append,
    parse_json,
    read_bounded,
    read_json_file,
)

# -- the helpers ---------------------------------------------------------------------

def test_only_regular_files_are_read_and_never_past_the_bound(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device"),
                       (tmp_path, "directory")):
        with pytest.raises(UserFileError, match=kind):
            read_bounded(path, 100, "names file")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(UserFileError, match=r"big is 101 bytes, more than the 100 bytes"):
        read_bounded(big, 100, "names file")
    assert read_bounded(big, 101) == b"x" * 101
    with pytest.raises(UserFileError) as missing:
        read_bounded(tmp_path / "nope", 100)
    assert missing.value.errno == 2
    link = tmp_path / "link"
    link.symlink_to(big)
    with pytest.raises(UserFileError, match="symbolic link"):
        read_bounded(link, 1000, follow_symlinks=False)


def test_json_with_a_repeated_key_or_deep_nesting_is_refused_by_name(tmp_path):
    with pytest.raises(UserFileError, match="doc: the key 'a' appears more than once"):
        parse_json(b'{"b": {"a": 1, "a": 2}}', "doc")
    assert parse_json('{"a": {"a": 1}}', "doc") == {"a": {"a": 1}}
    with pytest.raises(UserFileError, match="doc is not valid JSON: it is not UTF-8"):
        parse_json(b'{"a": "\xff"}', "doc")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    with pytest.raises(UserFileError, match=f"index {deep} is nested too deeply"):
        read_json_file(deep, 1 << 20, "index")


def test_appends_start_on_a_fresh_line_and_never_follow_links(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    log = out / "log.jsonl"
    log.write_bytes(b'{"cut": ')  # a writer died mid-line
    with open_append(log, out) as handle:
        handle.write(b"{}\n")
    assert log.read_bytes() == b'{"cut": \n{}\n'
    with open_append(log, out) as handle:  # ends with a newline: nothing added
        handle.write(b"[]\n")
    assert log.read_bytes().endswith(b"{}\n[]\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    (out / "l.jsonl").symlink_to(outside)
    with pytest.raises(UserFileError, match="symbolic link"):
        open_append(out / "l.jsonl", out)
    os.link(outside, out / "hard.jsonl")
    with pytest.raises(UserFileError, match="hard link"):
        open_append(out / "hard.jsonl", out)
    (out / "sub").symlink_to(tmp_path)
    with pytest.raises(UserFileError, match="outside"):
        open_append(out / "sub" / "x.jsonl", out)
    assert outside.read_text() == "mine\n"


def test_lines_are_streamed_and_an_overlong_one_is_skipped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"a\n" + b"x" * 5000 + b"\nb\r\nc")
    assert list(iter_lines(path, max_line_bytes=100)) == [(1, b"a"), (2, None), (3, b"b"),
                                                          (4, b"c")]


