"""One live run per workdir: an advisory `fcntl.flock` on a file in it, which the kernel releases when the
process ends, however it ends (SIGKILL included), so a restart never meets a stale lock.

flock is reliable on local disks. On NFS (Linux >= 2.6.12) it is emulated with POSIX byte-range locks and works
when the server supports locking; on filesystems without lock support (some FUSE or object-store mounts) it
may succeed for everyone, and then nothing stops a second run.
"""
import fcntl
import os
import socket


class WorkdirBusy(RuntimeError):
  """Another live process holds the lock."""


class WorkdirLock:
  def __init__(self, folder, what):
    self.path = os.path.join(folder, f'.lock-{what}')
    self.what = what
    self.file = None

  def acquire(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self.file = open(self.path, 'a+')
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or 'another process'
      self.file.close()
      self.file = None
      raise WorkdirBusy(f'{os.path.dirname(self.path)} is in use by a running {self.what} ({holder}); wait for it '
                        'to end, or use another --workdir.') from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'host {socket.gethostname()}, pid {os.getpid()}')
    self.file.flush()
    return self

  def release(self):
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()
      self.file = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
