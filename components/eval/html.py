"""The report as one self-contained page: report.md rendered to report.html, its PNGs inlined.

A markdown file that points at `loss_curves.png` shows alt text wherever the PNG is not beside it
(the Prefect UI, a mail, a copied file); inlining the images as data URIs makes the page and the
Prefect artifact whole on their own.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt

IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; }
code { background: #f5f5f5; padding: 0 0.2rem; }
"""


def inline_images(markdown: str, base_dir: Path) -> str:
    """Each `![alt](file.png)` whose file is in base_dir becomes a data URI; other links stay as they are."""
    def replace(match: re.Match) -> str:
        alt, target = match.groups()
        path = Path(base_dir) / target
        if target.startswith(("data:", "http:", "https:")) or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f"![{alt}](data:image/{path.suffix.lstrip('.').lower() or 'png'};base64,{data})"

    return IMAGE.sub(replace, markdown)


def render_html(report_md: Path, title: str = "Pipeline report") -> Path:
    """report.html beside report.md: the same content, images inside, readable offline in any browser."""
    report_md = Path(report_md)
    text = inline_images(report_md.read_text(), report_md.parent)
    # html=False: text from the data (sample generations) is escaped, never markup
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")
    out = report_md.with_suffix(".html")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
