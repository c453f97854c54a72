"""The pieces every HTML page of the project shares: one style, one way to print a value, one
``<img>`` for a PNG beside the page.

The report (``evaluate/report.py``), the A/B test's page and the loop's report are read side by
side, so they look alike and print numbers alike; each page keeps only what is its own.
"""
import html
import os

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #c0504d; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
pre, code { background: #f6f8fa; font-size: 0.85em; }
pre { padding: .6em; overflow-x: auto; white-space: pre-wrap; }
.note { color: #555; font-size: 0.9em; }
"""


def format_value(value):
    """A table cell: "—" for a missing value, floats to 4 decimals, the rest escaped."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def img_tag(path, alt):
    """An ``<img>`` of the PNG at ``path``, referenced by its name (it sits beside the page)."""
    return f'<img src="{html.escape(os.path.basename(path))}" alt="{html.escape(alt)}">'


def write_html(path, title, sections, style=STYLE):
    """Write ``sections`` (HTML strings, in order) as a page titled ``title`` to ``path``; returns it."""
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    with open(path, "w") as f:
        f.write(page)
    return path
