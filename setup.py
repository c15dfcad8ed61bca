"""Packaging for serialproxy: web serial consoles for libvirt/QEMU VMs."""
import os

from setuptools import find_packages, setup


def _static_files():
    """static/ as data files, so an installed (not editable) serialproxy has its console page."""
    found = []
    for base, _dirs, files in os.walk("static"):
        if files:
            found.append((os.path.join("share", "serialproxy", base), [os.path.join(base, f) for f in files]))
    return found

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
    data_files=_static_files(),
    install_requires=[
        "Twisted[tls,conch]>=24.3",
        "autobahn>=24.4",
        "txaio>=23.1",
        "klein>=24.8",
        "attrs>=23.1",
        "treq>=23.11",
        "psycopg2-binary>=2.9",
        "libvirt-python>=9.0",
        "websockets>=12",  # its C apply_mask unmasks console input (docs/performance.md)
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
