"""Makes api/web/map/dumai-land.geojson: the coastline of Dumai, clipped
from @geo-maps/earth-lands-10m 0.6.0 (OpenStreetMap land polygons, ODbL
1.0; code MIT) and simplified to ~25 m, so the public map draws the city
with no tile server.

    npm pack @geo-maps/earth-lands-10m@0.6.0 && tar xzf geo-maps-*.tgz
    pip install shapely==2.*
    python3 api/web/map/clip_outline.py package/map.geo.json
"""

import json
import sys

from shapely.geometry import box, mapping, shape

# lon/lat box around the demo registry's sites (101.41-101.49 E,
# 1.61-1.71 N) with room to pan (the map's bounds).
BBOX = box(101.00, 1.30, 101.90, 2.05)


def main(src: str, dst: str) -> None:
    with open(src, encoding="utf-8") as f:
        world = json.load(f)
    if world.get("type") == "GeometryCollection":
        geoms = world["geometries"]
    elif world.get("type") == "FeatureCollection":
        geoms = [f["geometry"] for f in world["features"]]
    else:
        geoms = [world]
    parts = []
    for g in geoms:
        geom = shape(g)
        if not geom.intersects(BBOX):
            continue
        clipped = geom.intersection(BBOX).simplify(0.00025, preserve_topology=True)
        if not clipped.is_empty:
            parts.append(clipped)
    out = {
        "type": "FeatureCollection",
        "attribution": "© OpenStreetMap contributors (ODbL), via @geo-maps/earth-lands-10m",
        "features": [
            {"type": "Feature", "properties": {"layer": "land"}, "geometry": mapping(p)}
            for p in parts
        ],
    }
    text = json.dumps(out, separators=(",", ":"))
    # Six decimals is ~0.1 m: more is noise.
    import re

    text = re.sub(r"(\d+\.\d{5})\d+", r"\1", text)
    with open(dst, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{dst}: {len(parts)} features, {len(text)} bytes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "api/web/map/dumai-land.geojson")
