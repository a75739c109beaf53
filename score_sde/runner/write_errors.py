"""Why a write failed, in words a user can act on: the errno text (disk full, file too large, permission denied,
quota exceeded) found in an exception, whichever library raised it.

Python's OSError carries the errno; orbax's checkpoint writes go through tensorstore, whose errors are ValueErrors
that end in "... File too large [os_error_code='27']". This module imports nothing of the package.
"""
import errno as errno_names
import os
import re

_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")
_ONLY_WRITES_FAIL_SO = {errno_names.ENOSPC, errno_names.EFBIG, errno_names.EDQUOT, errno_names.EROFS}


class WriteFailed(RuntimeError):
  """A checkpoint or output that could not be written; the message names what, where and why."""


def _chain(error):
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def errno_of(error):
  """The errno behind `error` or anything that caused it, or None."""
  for link in _chain(error):
    if isinstance(link, OSError) and link.errno:
      return link.errno
    found = _TENSORSTORE_ERRNO.search(str(link))
    if found:
      return int(found.group(1))
  return None


def reason(error):
  """'File too large (EFBIG)' when an errno is known; otherwise the error's first line, shortened."""
  number = errno_of(error)
  if number is not None:
    return f'{os.strerror(number)} ({errno_names.errorcode.get(number, f"errno {number}")})'
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:200]}' if text else type(error).__name__


def describe(error):
  """One line for a failed file operation, or None if `error` is not one: a WriteFailed says it all; an OSError
  with a file name becomes 'cannot write <file>: <errno text>' (or '<file>: <errno text>' when the errno does not
  tell a write from a read)."""
  if isinstance(error, WriteFailed):
    return str(error)
  if isinstance(error, OSError) and error.errno and error.filename:
    what = 'cannot write ' if error.errno in _ONLY_WRITES_FAIL_SO else ''
    return f'{what}{error.filename}: {reason(error)}'
  return None
