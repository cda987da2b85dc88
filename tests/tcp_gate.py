"""A TCP front for a server on loopback, on a port of its own, that resets the next
connections it is told to before reading a byte (an RST, as a host refusing or dropping the
connection sends): to a client, that one attempt fails at the connection, while the ones
after it reach the server. The proxy sends all models to one upstream origin, so a refused
connection for one model of a chain can only be made this way."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class TcpGate:
    """Forwards to ``127.0.0.1:target_port``; ``reset_next(n)`` resets the next ``n``
    connections; ``resets`` counts the connections reset so far."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.resets = 0
        self._to_reset = 0
        self._lock = threading.Lock()

    def reset_next(self, count: int) -> None:
        with self._lock:
            self._to_reset += count

    def _take_reset(self) -> bool:
        with self._lock:
            if self._to_reset <= 0:
                return False
            self._to_reset -= 1
            self.resets += 1
            return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._take_reset():
            sock: socket.socket = writer.get_extra_info("socket")
            # Linger 0: close() sends an RST instead of a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            with contextlib.suppress(OSError):
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the gate in a thread of its own; yield its ``http://`` base URL."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tcp-gate", daemon=True)
        thread.start()
        starting = asyncio.start_server(self._handle, "127.0.0.1", 0)
        server = asyncio.run_coroutine_threadsafe(starting, loop).result(10)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:

            async def stop() -> None:
                server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
