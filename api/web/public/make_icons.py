"""Renders the app icons the web app manifest names from icon.svg:
icon-192.png and icon-512.png (any purpose) and icon-maskable-512.png (the
same drawing on a full-bleed square, inside the 80 % safe zone).

    pip install cairosvg==2.7.1
    python3 api/web/public/make_icons.py
"""

import pathlib

import cairosvg

HERE = pathlib.Path(__file__).parent
SVG = (HERE / "icon.svg").read_text(encoding="utf-8")
# The maskable one: no rounded corners, the drawing scaled to 80 % about
# the centre.
inner = SVG[SVG.index(">") + 1 : SVG.rindex("</svg>")]
inner = inner.replace('<rect width="64" height="64" rx="14" fill="#0b3d5c"/>', "")
MASKABLE = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<rect width="64" height="64" fill="#0b3d5c"/>'
    f'<g transform="translate(6.4 6.4) scale(0.8)">{inner}</g></svg>'
)

for name, svg, size in [
    ("icon-192.png", SVG, 192),
    ("icon-512.png", SVG, 512),
    ("icon-maskable-512.png", MASKABLE, 512),
]:
    cairosvg.svg2png(bytestring=svg.encode(), write_to=str(HERE / name), output_width=size, output_height=size)
    print(name, (HERE / name).stat().st_size, "bytes")
