"""mkdocs hook: Sphinx roles in snnk's docstrings become links of the API reference.

The docstrings are numpy style and cross-reference with Sphinx roles (``:class:`Kernel```,
``:func:`~snnk.features.centers.select_centers```), which Markdown renders as the literal
``:class:`` followed by code. This hook turns each into an optional autorefs reference: a link
when the object is rendered in the API reference (a name without a dot is looked up in the
package of the API page it appears on; a method or attribute without a dot stays code), plain
code otherwise, never a warning. ``~`` keeps the
last component as the title, as in Sphinx.
"""

from __future__ import annotations

import re

_ROLE = re.compile(
    r":(?:py:)?(func|class|meth|mod|attr|data|exc|obj|const):<code>(~?)([\w.]+)(\(\))?</code>"
)


def _package(page) -> str | None:
    """``snnk.models`` for ``api/models.md``; None elsewhere."""
    path = page.file.src_uri
    if path.startswith("api/") and path.endswith(".md"):
        return "snnk." + path[4:-3]
    return None


def on_page_content(html: str, page, config, files) -> str:
    package = _package(page)

    def link(match: re.Match) -> str:
        role, short, name, call = match.group(1), match.group(2), match.group(3), match.group(4)
        name, call = name.lstrip("."), call or ""
        title = name.rsplit(".", 1)[-1] if short else name
        if role in ("meth", "attr") and "." not in name:  # a member of a class we cannot know
            return f"<code>{title}{call}</code>"
        identifier = name
        if package and not name.startswith("snnk."):
            identifier = f"{package}.{name}"
        return f'<autoref identifier="{identifier}" optional><code>{title}{call}</code></autoref>'

    return _ROLE.sub(link, html)
