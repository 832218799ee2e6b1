"""gevent shells around core: sockets, pools, the per-connection loop."""
