"""A real SSH server on 127.0.0.1 for the SSH runner's tests: asyncssh (the SSH protocol, public-key auth,
exec requests run by the local shell) in a background thread. No sshd binary is needed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import asyncssh


async def _exec(process: asyncssh.SSHServerProcess) -> None:
    """Run the command with the client's whole stdin, then send its whole output, then the exit status: never an
    exit status that overtakes output still in flight (which `redirect` allowed under load)."""
    pipe = asyncio.subprocess.PIPE
    given = await process.stdin.read()  # the client sends EOF: a file it pipes, or /dev/null
    proc = await asyncio.create_subprocess_shell(process.command or "true", stdin=pipe, stdout=pipe, stderr=pipe)
    out, err = await proc.communicate(given)
    process.stdout.write(out)
    process.stderr.write(err)
    await process.stdout.drain()
    process.exit(proc.returncode or 0)
    await process.wait_closed()


class LocalSshd:
    """``with LocalSshd(folder) as server:`` -> ``server.port``, ``server.client_key`` (a private key file)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0
        self.client_key = folder / "id_ed25519"

    async def _start(self) -> asyncssh.SSHAcceptor:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client = asyncssh.generate_private_key("ssh-ed25519")
        client.write_private_key(str(self.client_key))
        self.client_key.chmod(0o600)
        authorized = self.folder / "authorized_keys"
        client.write_public_key(str(authorized))
        return await asyncssh.create_server(
            asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key],
            authorized_client_keys=str(authorized), process_factory=_exec, encoding=None,
        )  # fmt: skip

    def __enter__(self) -> LocalSshd:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
