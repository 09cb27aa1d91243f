"""Offline stand-in for the pip bootstrap script ansible-test downloads into its per-test venvs.

ansible-test creates each sanity venv without pip and runs a bootstrap script with pip's
arguments (``--disable-pip-version-check pip==X ... --no-setuptools --no-wheel``). The Makefile
puts this file where ansible-test caches that script, so the venvs get pip from the
interpreter's own ensurepip and then the pinned packages from the configured package index.
"""

from __future__ import annotations

import subprocess
import sys

GET_PIP_ONLY_OPTIONS = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
    pip_arguments = [argument for argument in sys.argv[1:] if argument not in GET_PIP_ONLY_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *pip_arguments])


if __name__ == "__main__":
    main()
