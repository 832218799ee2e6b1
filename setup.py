"""forkproxy packaging: console scripts forkproxy and forkproxyctl; extras "test"."""

from glob import glob

from setuptools import find_packages, setup

from forkproxy import __version__ as VERSION  # noqa: E402  (version only, no imports)

setup(
    name="forkproxy",
    version=VERSION,
    description="A prefork reverse proxy and load balancer for Unix servers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["forkproxy", "forkproxy.*"]),
    # The admin endpoint's status page (GET /), read with importlib.resources.
    package_data={"forkproxy.net": ["status_page.html"]},
    install_requires=[
        "gevent>=24.10,<27",
        # The master is gunicorn's Arbiter through its public embedding API:
        # pin the major so its internals cannot shift under us.  The extras
        # are what its gevent worker imports (packaging) and what names each
        # process in ps (setproctitle); plain "gunicorn" has neither.
        "gunicorn[gevent,setproctitle]>=27.0,<28",
        "requests>=2.31,<3",
        "pylibmc>=1.6,<2",
        # HTTP/2 to clients: the framing, flow control and HPACK are the
        # h2 library's (sans-IO); the proxying is ours (net/h2_conn.py).
        "h2>=4.1,<5",
        "tomli>=2.0,<3",
        # Configured regexes (routes, deny rules, rewrites, health checks) run on
        # RE2: linear time whatever the pattern, so no request can freeze a worker.
        "google-re2>=1.1,<2",
        # DNS discovery ({ dns = ... } and { srv = ... } servers): SRV records, TTLs
        # and chosen resolvers, which the standard library's getaddrinfo cannot give.
        "dnspython>=2.4,<3",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "trustme>=1.1",
            # tests/e2e/test_websocket.py: a real WebSocket server and client
            "websockets>=12",
            "websocket-client>=1.6",
            # tests/e2e/test_compression.py: the br coding
            "brotli>=1.0",
            # tests/e2e/test_grpc.py: a real gRPC server and client through forkproxy
            "grpcio>=1.60",
        ],
        # compress = { ... } offers br (brotli) besides gzip when it is installed
        "brotli": ["brotli>=1.0"],
    },
    entry_points={
        "console_scripts": [
            "forkproxy = forkproxy.cli:main",
            "forkproxyctl = forkproxy.ctl:main",
        ],
    },
    data_files=[
        ("share/man/man8", glob("man/*.8")),
        ("share/man/man5", glob("man/*.5")),
        ("share/doc/forkproxy/conf", glob("conf/*.toml")),
        ("share/doc/forkproxy/init", glob("init/*")),
    ],
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet :: Proxy Servers",
    ],
)
