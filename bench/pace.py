"""A TCP proxy in front of the emulator with S3's shape, scaled down (bench/s3-shape.sh): every request
waits LATENCY_MS before it is forwarded (first-byte latency), and every connection's responses are paced
at RATE bytes per second, and so are its requests' bodies (uploads): one connection's rate each way; S3
scales by connections, so N connections get N times the rate. HTTP/1.1 keep-alive: a request is the first
bytes a client sends after a response began.

    python3 bench/pace.py LISTEN_PORT UPSTREAM_PORT [RATE_BYTES_PER_S] [LATENCY_MS]
"""
import asyncio
import sys

listen, upstream = int(sys.argv[1]), int(sys.argv[2])
rate = float(sys.argv[3]) if len(sys.argv) > 3 else 8e6
latency = (float(sys.argv[4]) if len(sys.argv) > 4 else 20.0) / 1000.0
CHUNK = 64 * 1024


class Pacer:
    """RATE bytes per second on one direction of one connection; idle time is not saved up."""

    def __init__(self):
        self.start, self.sent = 0.0, 0

    async def wait(self, size):
        now = asyncio.get_running_loop().time()
        if self.sent / rate < now - self.start - 0.05:  # idle in between: the pacing starts again
            self.start, self.sent = now, 0
        self.sent += size
        ahead = self.start + self.sent / rate - now
        if ahead > 0:
            await asyncio.sleep(ahead)


async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        client_w.close()
        return
    state = {"fresh": True}

    async def requests():
        pacer = Pacer()
        while data := await client_r.read(CHUNK):
            if state["fresh"]:
                state["fresh"] = False
                await asyncio.sleep(latency)
            await pacer.wait(len(data))
            up_w.write(data)
            await up_w.drain()
        up_w.close()

    async def responses():
        pacer = Pacer()
        while data := await up_r.read(CHUNK):
            state["fresh"] = True
            await pacer.wait(len(data))
            client_w.write(data)
            await client_w.drain()
        client_w.close()

    try:
        await asyncio.gather(requests(), responses())
    except (ConnectionError, OSError):
        pass
    finally:
        client_w.close()
        up_w.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
