"""What a search draws and writes for people: annotated frames, the overview sheet, the HTML page.

Owns :func:`annotate_frame` (every detection boxed and labelled with its similarity, the best
match green), :func:`make_overview` (the query crop next to the top-k crops), :func:`write_html`
(``index.html``: overview, top-k table, links to the annotated frames, skipped files) and the
small helpers they share (crops, frame file names, time stamps).
"""

from __future__ import annotations

import html
import math
import os
import urllib.parse
from typing import Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_TOP1 = (0, 230, 0)
_TOPK = (255, 200, 0)
_OTHER = (80, 170, 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(int(size), 8))
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy, text: str, colour, font) -> None:
    x, y = xy
    x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
    draw.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=colour)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)


def annotate_frame(
    image: np.ndarray,
    boxes: np.ndarray,
    sims: np.ndarray,
    ranks: np.ndarray,
    top_k: int,
    title: str,
) -> Image.Image:
    """The frame with every detection boxed and labelled with its similarity: the overall best
    match thick green ``#1``, the other top-k yellow ``#r``, the rest thin blue. Frames whose
    shorter side is below 480 pixels are enlarged by an integer factor to keep labels legible."""
    im = Image.fromarray(image)
    h, w = image.shape[:2]
    up = max(1, math.ceil(480 / max(min(h, w), 1)))
    if up > 1:
        im = im.resize((w * up, h * up), Image.NEAREST)
        boxes = np.asarray(boxes, np.float32) * up
        h, w = h * up, w * up
    draw = ImageDraw.Draw(im)
    font = _font(max(12, min(h, w) // 45))
    small = _font(max(10, min(h, w) // 65))
    lw = max(2, min(h, w) // 300)
    order = np.argsort(-ranks)  # best last: drawn on top
    for j in order:
        r = int(ranks[j])
        colour = _TOP1 if r == 1 else (_TOPK if r <= top_k else _OTHER)
        width = lw * (3 if r == 1 else 2 if r <= top_k else 1)
        f = font if r <= top_k else small
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"#{r} {sims[j]:.2f}" if r <= top_k else f"{sims[j]:.2f}"
        ty = y1 - f.size - 6 if y1 - f.size - 6 >= 0 else y1 + width + 2
        _label(draw, (x1 + 2, ty), text, colour, f)
    _label(draw, (4, h - small.size - 6), title, (255, 255, 255), small)
    return im


def _fit(im: Image.Image, w: int, h: int) -> Image.Image:
    s = min(w / max(im.width, 1), h / max(im.height, 1))
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)


def make_overview(
    query_crop: np.ndarray,
    matches: Sequence[Tuple[np.ndarray, str, str]],
    cell: Tuple[int, int] = (160, 320),
    per_row: int = 6,
) -> Image.Image:
    """Query crop + top-k crops side by side; ``matches`` = ``(picture, line1, line2)`` each."""
    cw, ch = cell
    font = _font(15)
    small = _font(12)
    text_h = 44
    n = 1 + len(matches)
    cols = min(n, per_row + 1)
    rows = int(math.ceil(n / cols))
    pad = 8
    sheet = Image.new(
        "RGB", (cols * (cw + pad) + pad, rows * (ch + text_h + pad) + pad), (245, 245, 245)
    )
    draw = ImageDraw.Draw(sheet)
    tiles = [(query_crop, "query", "", (40, 90, 220))]
    for k, (pic, l1, l2) in enumerate(matches):
        tiles.append((pic, l1, l2, _TOP1 if k == 0 else _TOPK))
    for i, (pic, l1, l2, colour) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cw + pad), pad + r * (ch + text_h + pad)
        draw.rectangle([x0 - 3, y0 - 3, x0 + cw + 2, y0 + ch + text_h + 2], outline=colour, width=3)
        if pic is not None and pic.size:
            t = _fit(Image.fromarray(pic), cw, ch)
            sheet.paste(t, (x0 + (cw - t.width) // 2, y0 + (ch - t.height) // 2))
        else:
            draw.text((x0 + 8, y0 + ch // 2), "(no picture)", fill=(0, 0, 0), font=small)
        draw.text((x0 + 2, y0 + ch + 4), l1, fill=(0, 0, 0), font=font)
        draw.text((x0 + 2, y0 + ch + 24), l2[:26], fill=(60, 60, 60), font=small)
    if not matches:
        draw.text(
            (pad + cw + 2 * pad, pad + ch // 2),
            "no person detected in the gallery",
            fill=(200, 0, 0),
            font=font,
        )
    return sheet


def crop(image: np.ndarray, box, margin: float = 0.05) -> np.ndarray:
    """``image`` cut to ``box`` (x1, y1, x2, y2) widened by ``margin`` of its size per side."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    xa, ya = int(max(0, math.floor(x1 - mx))), int(max(0, math.floor(y1 - my)))
    xb, yb = int(min(w, math.ceil(x2 + mx))), int(min(h, math.ceil(y2 + my)))
    return image[ya:yb, xa:xb]


def frame_file_name(key: str, kind: str, index: int, t: float) -> str:
    """File name of an annotated frame (videos: time stamp and frame index appended)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in key.replace("/", "__"))
    if kind == "video":
        return f"{safe}__t{t:010.3f}s_f{index:07d}.jpg"
    return f"{safe}.jpg"


def format_time(t: float) -> str:
    """``h:mm:ss.sss`` of a video time stamp in seconds ( for images, whose time is NaN)."""
    if not math.isfinite(t):
        return ""
    m, s = divmod(t, 60.0)
    return f"{int(m) // 60:d}:{int(m) % 60:02d}:{s:06.3f}"


def write_html(path: str, results: dict) -> None:
    """``index.html``: the overview, the top-k table, links to the annotated frames, skips."""
    e = html.escape

    def link(p):
        return urllib.parse.quote(p) if p else ""

    q = results["query"]
    rows = []
    for d in results["top_k"]:
        where = e(d["file"]) + (f" @ {e(format_time(d['time']))}" if d["time"] is not None else "")
        frame = f'<a href="{link(d["annotated"])}">{where}</a>' if d["annotated"] else where
        rows.append(
            f"<tr><td>{d['rank']}</td><td>{d['similarity']:.3f}</td>"
            f"<td>{d['score']:.3f}</td><td>{frame}</td>"
            f"<td>{', '.join(f'{v:.0f}' for v in d['box'])}</td></tr>"
        )
    frames = [
        f'<li><a href="{link(f["annotated"])}">{e(f["file"])}'
        + (f" @ {e(format_time(f['time']))}" if f["time"] is not None else "")
        + "</a>"
        + (
            f" (best {f['best_similarity']:.3f})"
            if f["best_similarity"] is not None
            else " (nobody detected)"
        )
        + "</li>"
        for f in sorted(
            (f for f in results["frames"] if f["annotated"]),
            key=lambda f: np.inf if f["best_similarity"] is None else -f["best_similarity"],
        )
    ]
    skipped = [f"<li>{e(s['file'])}: {e(s['reason'])}</li>" for s in results["skipped"]]
    skipped += [
        f"<li>{e(w['file'])} (searched): {e(w['warning'])}</li>" for w in results["warnings"]
    ]
    s = results["summary"]
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Person search: {e(os.path.basename(q["image"]))}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left}} img{{max-width:100%}}</style>
</head><body>
<h1>Person search</h1>
<p>Query <code>{e(q["image"])}</code>, box {e(", ".join(f"{v:.0f}" for v in q["box"]))};
gallery <code>{e(results["gallery"])}</code>: {s["num_files"]} file(s), {s["num_frames"]} frame(s),
{s["num_detections"]} detection(s), {len(results["skipped"])} skipped.
Ranked by {e(results["similarity"])}.</p>
<p><img src="{link(results["overview"])}" alt="query and top matches"></p>
<h2>Top {len(results["top_k"])}</h2>
<table><tr><th>rank</th><th>similarity</th><th>detection score</th><th>frame</th><th>box</th>
</tr>
{"".join(rows) or '<tr><td colspan="5">no person detected in the gallery</td></tr>'}
</table>
<h2>Annotated frames</h2><ul>{"".join(frames) or "<li>none</li>"}</ul>
<h2>Skipped files and warnings</h2><ul>{"".join(skipped) or "<li>none</li>"}</ul>
<p>Every detection: <a href="results.json">results.json</a>.</p>
</body></html>
"""
    with open(path, "w") as f:
        f.write(doc)
