from setuptools import find_packages, setup

# cyclone 1.3 is deliberately not listed: its pins (twisted==19.2.1) cannot be installed on
# Python 3.11, so the Makefile installs it with --no-deps
# (see docs/stack-notes.md#installing-cyclone).
setup(
    name="restmq",
    version="2.0.0",
    description="A message queue over HTTP, kept in Redis",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["restmq", "restmq.*"]) + ["twisted.plugins"],
    package_data={
        "restmq": ["static/*", "templates/*", "scripts/*.lua", "scripts/lib/*.lua", "acl.conf"],
        "twisted": ["plugins/restmq_plugins.py"],
    },
    install_requires=[
        "twisted>=24.7",
        "txredisapi>=1.6,<1.7",
        "hiredis",
        "pyopenssl",
        "service_identity",
        # llhttp's HTTP/1.x parser and a sans-I/O WebSocket (docs/stack-notes.md#versions)
        "httptools>=0.9,<0.10",
        "wsproto>=1.3,<1.4",
        "prometheus_client>=0.20,<1",  # /metrics
    ],
    entry_points={"console_scripts": ["restmq-engine = restmq.engine:main",
                                     "restmq = restmq.client.cli:main"]},
    extras_require={"test": ["pytest", "pytest-twisted", "autobahn", "h11"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
