"""Pure logic, no I/O: stdlib (and httptools) only. No sockets, no gevent, no clock reads."""
