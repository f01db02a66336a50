"""Only what pyproject.toml cannot say: conf/ at the top of the repository ships as the package zoo.conf."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["zoo", "zoo.*"]) + ["zoo.conf"],
    package_dir={"zoo.conf": "conf"},
)
