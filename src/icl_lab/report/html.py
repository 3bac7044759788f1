"""Self-contained HTML pages: inlined PNG figures, one stylesheet, a check that every figure drew."""

import base64
import html
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from icl_lab.files import storage_error

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.85em; }
figure { margin: 1.5em 0; } img { max-width: 100%; } figcaption { color: #555; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""

# sets body[data-figures] to "drawn/total" once the page has loaded (read by the browser test)
FIGURE_CHECK = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const drawn = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  document.body.dataset.figures = drawn + "/" + images.length;
});
"""


def save_png(fig: Figure, path: Path) -> bytes:
    """Write a figure as PNG, close it, and return the bytes; StorageError naming the file if the
    disk refuses (the image library's error names none)."""
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise storage_error("write", path, e) from None
    finally:
        plt.close(fig)
    return path.read_bytes()


def figures_html(images: dict[str, bytes]) -> str:
    """<figure> elements with the PNGs inlined as data URIs, captioned by their titles."""
    parts = []
    for title, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        caption = html.escape(title)
        parts.append(f'<figure><img alt="{caption}" src="{uri}"><figcaption>{caption}</figcaption></figure>')
    return "".join(parts)


def page(title: str, body: str) -> str:
    """A complete page: no external resources."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body data-figures="pending">
{body}
<script>{FIGURE_CHECK}</script>
</body></html>
"""
