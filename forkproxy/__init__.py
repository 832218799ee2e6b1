"""forkproxy: a prefork reverse proxy and load balancer for Unix servers."""

__version__ = "0.1.0"
