"""Writing files so that a reader sees the old file or the whole new one, never a part.

Each writer fills `<path>.tmp<pid>` beside the target and renames it over the target (`os.replace` is atomic on
one filesystem). A write that fails (disk full, file too large, permission) removes its temporary file and
raises the OSError, named after the target file, so the previous file stays as it was. This module imports
nothing of the package.
"""
import contextlib
import json
import os

import numpy as np


@contextlib.contextmanager
def replacing(path, mode='w'):
  """`with replacing(path) as f:` writes f to a temporary file that replaces `path` when the block ends."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, mode) as f:
      yield f
      f.flush()
    os.replace(tmp, path)
  except BaseException as error:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    if isinstance(error, OSError) and error.errno and error.filename in (None, tmp):
      raise OSError(error.errno, error.strerror, path) from error  # name the file the caller asked for
    raise


def write_json(path, data, indent=2):
  with replacing(path) as f:
    json.dump(data, f, indent=indent)


def savez(path, compressed=False, **arrays):
  with replacing(path, 'wb') as f:
    (np.savez_compressed if compressed else np.savez)(f, **arrays)


def write_text(path, text):
  with replacing(path) as f:
    f.write(text)
