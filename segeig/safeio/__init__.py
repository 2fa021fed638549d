"""Reading user-named files and appending inside an output folder, safely.

Every file a user names (a names file, a checkpoint, a dataset's list files,
an output folder's manifest or a cache index) is untrusted: it may be a FIFO
that never delivers a byte, ``/dev/zero``, a directory, a 2 GB file where a
few kilobytes are expected, or JSON with duplicate keys or nested 100 000
levels deep. This package is the one place that opens such files:

* :mod:`segeig.safeio.files` — :func:`open_regular` (opened without blocking,
  refused unless a regular file), :func:`read_bounded` (size checked before
  reading, read with a hard bound), :func:`iter_lines` (streamed, bounded
  lines), :func:`open_append` (appending inside a folder without following
  links, always on a fresh line);
* :mod:`segeig.safeio.jsonread` — :func:`parse_json` (duplicate keys refused,
  too-deep nesting reported with the file's name) and :func:`read_json_file`.
"""

from segeig.safeio.files import (
    UserFileError,
    iter_lines,
    open_append,
    open_regular,
    read_bounded,
)
from segeig.safeio.jsonread import parse_json, read_json_file

__all__ = ["UserFileError", "iter_lines", "open_append", "open_regular", "parse_json",
           "read_bounded", "read_json_file"]
