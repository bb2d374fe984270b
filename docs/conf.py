"""Sphinx configuration for mongo-job-queue.

No intersphinx: the build must not fetch anything from the network.
"""

import os
import sys

# autodoc imports the package from this checkout, installed or not.
sys.path.insert(0, os.path.abspath(".."))
# Local extensions: config_reference renders QueueConfig's docstring as the config table.
sys.path.insert(0, os.path.abspath("_ext"))

import mongo_job_queue  # noqa: E402

project = "mongo-job-queue"
author = "The mongo-job-queue authors"
copyright = "2026, The mongo-job-queue authors"  # noqa: A001
release = mongo_job_queue.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "config_reference",
]

napoleon_google_docstring = True
napoleon_numpy_docstring = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {
    "description": "A persistent job queue in MongoDB, through MongoEngine",
}
