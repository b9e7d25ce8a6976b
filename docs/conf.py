"""Sphinx configuration: Markdown pages (myst-parser) plus an API reference read from the docstrings.

``make docs`` builds it with warnings as errors. Only the public API and a few stable modules are
documented with autodoc, so moving an internal module does not break the build.
"""

from __future__ import annotations

project = "policy_kd"
author = "policy_kd contributors"
copyright = "policy_kd contributors"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# docs/ also holds example evaluation folders (report.md beside its eval.json); they are data, not pages
exclude_patterns = ["_build", "cartpole", "lunarlander", "lunarlander_seeds"]

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# importing the modules must not need the optional extras (onnx, matplotlib...): they are imported lazily
autodoc_mock_imports: list[str] = []

html_theme = "furo"
html_title = "policy_kd"
