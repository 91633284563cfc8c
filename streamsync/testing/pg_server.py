"""A throwaway PostgreSQL server for the tests, the chaos script and the benchmarks.

`PgServer.start()` finds the server binaries (`find_bindir`), runs `initdb` into a fresh
temporary directory and starts `postgres` on a free loopback port, with its unix socket in that
directory too. Nothing is installed system-wide and nothing listens beyond 127.0.0.1.

PostgreSQL refuses to run as root. As root (these machines and CI) the server runs as a
dedicated unprivileged user, `streamsync-pg`, created with `useradd --system` when missing; the
data directory belongs to it. Every failure raises `RuntimeError` saying why, with the server's
log when there is one: a caller that needs the server fails loudly instead of skipping.

Where the binaries come from, first found wins:
1. `$STREAMSYNC_PG_BINDIR` (a directory holding initdb, pg_ctl and postgres);
2. `pg_ctl` on PATH;
3. Debian's and the PGDG layout `/usr/lib/postgresql/<version>/bin`, newest version first;
4. `.pg/bin` at the repository root: on a machine with none of the above, `make postgres`
   (run by `make test`) downloads the `pgserver` wheel from PyPI, pinned by hash in
   requirements/pgserver.txt, and unpacks only its PostgreSQL build there (`unpack_wheel`);
   the package itself is never installed.

The server is tuned for throwaway data (`fsync=off`): it is for tests, never for production.
A detached watchdog destroys it if the process that started it dies without doing so (a test
run killed by a timeout), so no server is ever left running.
Run `python -m streamsync.testing.pg_server` to start one and print its URL until Ctrl-C;
`python -m streamsync.testing.pg_server --unpack WHEEL` unpacks a wheel's server into `.pg/`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

RUN_AS = "streamsync-pg"
SUPERUSER = "streamsync"
REPO_PG = Path(__file__).resolve().parents[2] / ".pg"
REPO_BINDIR = REPO_PG / "bin"
WHEEL_PREFIX = "pgserver/pginstall/"
WHEEL_LIBS = "pgserver.libs/"  # the libraries auditwheel renamed, which the binaries link to
DEBIAN_ROOT = Path("/usr/lib/postgresql")
NEEDED = ("initdb", "pg_ctl", "postgres")
START_TIMEOUT_S = 60

# Test-only settings: no fsync (the data is thrown away); `durable=True` (benchmarks) keeps
# PostgreSQL's own defaults for these. Room for several worker processes.
NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "64MB",
    "listen_addresses": "127.0.0.1",
    "log_min_messages": "warning",
}

# The test superuser connects without a password; every other role must give its password
# (scram), so a test can prove that a configured password reaches the server.
HBA = f"""\
local all all trust
host all {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def _has_all(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in NEEDED)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())


def candidate_bindirs() -> list[Path]:
    """Every place looked at, in order (see the module docstring)."""
    found: list[Path] = []
    env = os.environ.get("STREAMSYNC_PG_BINDIR")
    if env:
        found.append(Path(env))
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    if DEBIAN_ROOT.is_dir():
        found.extend(sorted(DEBIAN_ROOT.glob("*/bin"), key=_version_key, reverse=True))
    found.append(REPO_BINDIR)
    return found


def find_bindir() -> Path:
    """The first directory holding initdb, pg_ctl and postgres; RuntimeError naming every
    place looked at when there is none."""
    looked = candidate_bindirs()
    for bindir in looked:
        if _has_all(bindir):
            return bindir
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in: "
        + ", ".join(str(p) for p in looked)
        + ". `make postgres` provisions them (Debian's package as root, else a pip wheel's "
        "server into .pg/), or set STREAMSYNC_PG_BINDIR."
    )


def unpack_wheel(wheel: Path, dest: Path = REPO_PG) -> Path:
    """Unpack the PostgreSQL build inside a `pgserver` wheel (bin, lib, share) into `dest`,
    keeping the executable bits; returns its bin directory."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(WHEEL_PREFIX)
                   and not m.filename.startswith(WHEEL_PREFIX + "include/")]
        if not members:
            raise RuntimeError(f"{wheel} holds no {WHEEL_PREFIX} (not a pgserver wheel?)")
        members += [m for m in archive.infolist() if m.filename.startswith(WHEEL_LIBS)]
        for member in members:
            name = member.filename
            target = (dest / "lib" / name[len(WHEEL_LIBS):] if name.startswith(WHEEL_LIBS)
                      else dest / name[len(WHEEL_PREFIX):])
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            mode = (member.external_attr >> 16) & 0o777
            os.chmod(target, mode or 0o644)
    for directory in [dest, *(p for p in dest.rglob("*") if p.is_dir())]:
        os.chmod(directory, 0o755)  # the server's own user must reach its files
    if not _has_all(dest / "bin"):
        raise RuntimeError(f"{wheel} did not hold initdb, pg_ctl and postgres")
    return dest / "bin"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_user(name: str) -> pwd.struct_passwd:
    """The unprivileged account the server runs as when we are root (created if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, check=False,
    )
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and the user {name!r} could not be created "
            f"(useradd exit {result.returncode}: {result.stderr.strip()})"
        ) from None


@dataclass
class PgServer:
    """One running throwaway server; `url()` gives a connection URL for its superuser."""

    bindir: Path
    root: Path
    port: int
    owner: pwd.struct_passwd | None = None
    superuser: str = SUPERUSER
    durable: bool = False
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.root / "server.log"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @classmethod
    def start(cls, root: Path | None = None, port: int | None = None, *,
              durable: bool = False) -> PgServer:
        """initdb into `root` (a new temporary directory by default) and start the server;
        `durable` keeps fsync and synchronous commits on (for benchmarks)."""
        bindir = find_bindir()
        root = Path(tempfile.mkdtemp(prefix="streamsync-pg-")) if root is None else root
        root.mkdir(parents=True, exist_ok=True)
        owner = _ensure_user(RUN_AS) if os.geteuid() == 0 else None
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chmod(root, 0o700)
        server = cls(bindir=bindir, root=root, port=port or free_port(), owner=owner,
                     durable=durable)
        try:
            server._initdb()
            server._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(server._log),
                           "-o", server._options())
        except BaseException:
            server.destroy()
            raise
        _watch(os.getpid(), root)
        return server

    def _run(self, args: list[str], what: str) -> None:
        kwargs: dict[str, object] = {}
        if self.owner is not None:
            kwargs = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC",
               "HOME": str(self.root)}
        libdir = self.bindir.parent / "lib"
        if any(libdir.glob("libpq*.so*")):  # an unpacked build brings its own libraries
            env["LD_LIBRARY_PATH"] = str(libdir)
        try:
            result = subprocess.run(  # noqa: S603 - fixed binaries, our own arguments
                args, capture_output=True, text=True, env=env, cwd=self.root,
                timeout=START_TIMEOUT_S + 30, check=False, **kwargs,  # type: ignore[call-overload]
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise RuntimeError(f"PostgreSQL {what} could not run ({args[0]}): {exc}") from exc
        if result.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL {what} failed (exit {result.returncode}, binaries {self.bindir}):\n"
                f"{result.stdout}{result.stderr}{self.log_tail()}"
            )

    def _initdb(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], "initdb")
        (self.datadir / "pg_hba.conf").write_text(HBA, encoding="utf-8")
        if self.owner is not None:
            os.chown(self.datadir / "pg_hba.conf", self.owner.pw_uid, self.owner.pw_gid)

    def _options(self) -> str:
        settings = {**({} if self.durable else NOT_DURABLE), **SETTINGS, "port": str(self.port),
                    "unix_socket_directories": str(self.socket_dir)}
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def _pg_ctl(self, *args: str) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args],
                  f"pg_ctl {args[0]}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            text = self._log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n--- server log ---\n" + text[-chars:]

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        """A connection URL (TCP on 127.0.0.1) for `user` (default: the trusted superuser)."""
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def restart(self) -> None:
        """Stop (fast: every connection is dropped) and start again on the same port."""
        self._pg_ctl("stop", "-m", "fast", "-w")
        self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self._log),
                     "-o", self._options())

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away anyway)."""
        if self.pid() is None:
            return
        try:
            self._pg_ctl("stop", "-m", "immediate", "-w")
        except RuntimeError:
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


def _watch(pid: int, root: Path) -> None:
    """A detached watchdog that destroys the server if process `pid` dies without doing so
    (killed, or stopped by a timeout before its teardown ran): no server is left behind."""
    subprocess.Popen(  # noqa: S603 - our own module, our own arguments
        [sys.executable, "-m", "streamsync.testing.pg_server", "--watch", str(pid), str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, cwd="/",
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_PG.parent), os.environ.get("PYTHONPATH", "")) if p)})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch(pid: int, root: Path, poll_s: float = 0.5) -> None:
    """Wait while `pid` lives and its server exists; then stop the server and delete it."""
    pidfile = root / "data" / "postmaster.pid"
    while _alive(pid) and root.exists():
        time.sleep(poll_s)
    if not pidfile.exists():
        return  # destroyed by its owner
    owner = pwd.getpwuid(root.stat().st_uid) if os.geteuid() == 0 else None
    PgServer(bindir=find_bindir(), root=root, port=0, owner=owner).destroy()


def main() -> int:
    """Start a server, print its URL, stop it on Ctrl-C or SIGTERM (or `--unpack WHEEL`)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--unpack":
        print(f"PostgreSQL server binaries: {unpack_wheel(Path(sys.argv[2]))}")
        return 0
    if len(sys.argv) == 4 and sys.argv[1] == "--watch":
        watch(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    server = PgServer.start()
    print(server.url(), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
