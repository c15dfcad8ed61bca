"""Packaging for serialproxy: web serial consoles for libvirt/QEMU VMs."""
from setuptools import find_packages, setup

setup(
    name="serialproxy",
    version="0.1.0",
    description="Interactive web-based serial consoles for libvirt/QEMU virtual machines",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]) + ["twisted.plugins"],
    package_data={"serialproxy": ["db-schemas/*.sql"]},
    include_package_data=True,
    install_requires=[
        "Twisted[tls,conch]>=24.3",
        "autobahn>=24.4",
        "txaio>=23.1",
        "klein>=24.8",
        "attrs>=23.1",
        "treq>=23.11",
        "psycopg2-binary>=2.9",
        "libvirt-python>=9.0",
    ],
    extras_require={
        "test": ["hypothesis>=6.100", "pytest>=8", "websockets>=12", "PyYAML>=6", "pexpect>=4.8", "playwright>=1.40"],
        "client": ["websockets>=12"],
    },
    entry_points={
        "console_scripts": [
            "serialproxy-manage = serialproxy.manage:main",
            "serialproxy-client = serialproxy.client:main",
        ],
    },
)
