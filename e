Traceback (most recent call last):
  File "/work/main/.venv/bin/daskmri", line 6, in <module>
    sys.exit(main())
             ^^^^^^
  File "/work/main/daskmri/cli.py", line 322, in main
    return args.func(args)
           ^^^^^^^^^^^^^^^
  File "/work/main/daskmri/cli.py", line 207, in _cmd_build
    report = build(
             ^^^^^^
  File "/work/main/daskmri/dataset.py", line 677, in build
    with connect(client, security=security) if scheduler is None else local_only as client:
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py", line 137, in __enter__
    return next(self.gen)
           ^^^^^^^^^^^^^^
  File "/work/main/daskmri/cluster.py", line 163, in connect
    resolved = resolve_client(client, security=security)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/daskmri/cluster.py", line 74, in resolve_client
    return Client(client, timeout=CONNECT_TIMEOUT, security=security)
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/client.py", line 1250, in __init__
    self.start(timeout=timeout)
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/client.py", line 1417, in start
    sync(self.loop, self._start, **kwargs)
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/utils.py", line 455, in sync
    raise error
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/utils.py", line 429, in f
    result = yield future
             ^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/tornado/gen.py", line 812, in run
    value = future.result()
            ^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/client.py", line 1495, in _start
    await self._ensure_connected(timeout=timeout)
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/client.py", line 1562, in _ensure_connected
    comm = await connect(
           ^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/comm/core.py", line 377, in connect
    handshake = await comm.read()
                ^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/comm/tcp.py", line 228, in read
    frames_nosplit = await read_bytes_rw(stream, frames_nosplit_nbytes)
                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/comm/tcp.py", line 360, in read_bytes_rw
    buf = host_array(n)
          ^^^^^^^^^^^^^
  File "/work/main/.venv/lib/python3.11/site-packages/distributed/protocol/utils.py", line 29, in host_array
    return numpy.empty((n,), dtype="u1").data
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
numpy._core._exceptions._ArrayMemoryError: Unable to allocate 2.82 EiB for an array with shape (3256153323631825747,) and data type uint8
