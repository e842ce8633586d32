"""Install apbd: the shared modules, the web layer, the runner and the `apbd` command.

The web templates and static files live in www/ at the top of the repository.
A checkout finds them there; an installed copy gets them under
PREFIX/share/apbd/www, where apbd.paths.www_dir() looks for them.
"""

import os
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def www_data_files() -> list[tuple[str, list[str]]]:
    """List www/ as data_files entries, one per folder, keeping the tree's shape."""
    entries = []
    www = HERE / "www"
    for folder, _, files in sorted(os.walk(www)):
        if not files:
            continue
        relative = Path(folder).relative_to(HERE)
        target = str(Path("share", "apbd") / relative)
        entries.append((target, sorted(str(relative / name) for name in files)))
    return entries


def read_version() -> str:
    for line in (HERE / "apbd" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("apbd/__init__.py has no __version__")


setup(
    name="apbd",
    version=read_version(),
    description="Build server for Arch Linux packages that speaks the APB server API",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["apbd", "apbd.*"]),
    package_data={"apbd": ["data/*"]},
    data_files=www_data_files(),
    install_requires=[
        "bottle",
        "waitress",
        "watchdog",
        "psutil",
        "jinja2",
        "requests",
    ],
    extras_require={
        "test": [
            "pytest",
            "requests",
            "hypothesis",
            "selenium",
            "schemathesis",
            "openapi-spec-validator",
        ],
    },
    entry_points={
        "console_scripts": [
            "apbd-web=apbd.web.main:main",
            "apbd-runner=apbd.runner.main:main",
            "apbd=apbd.cli:main",
        ],
    },
)
